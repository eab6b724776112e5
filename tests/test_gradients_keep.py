"""gradients.keep: candidates -- gradient files with SLUG's candidate layers only."""

import json

import open_clip
import pandas as pd
import pytest
import torch

from unlearnflow.data.select import select_sets
from unlearnflow.gradients import candidate_names, compute_set_gradients, load_gradients
from unlearnflow.io import InputFileError, UnlearnflowError
from unlearnflow.layers import DEFAULT_EXCLUDE, analyse, is_candidate
from unlearnflow.models.clip import load_clip, save_clip, tiny_config
from unlearnflow.stages.gradients import salun_masks

SMALL = tiny_config(
    {
        "embed_dim": 32,
        "vision_cfg": {"width": 32, "layers": 2, "head_width": 16, "patch_size": 8},
        "text_cfg": {"width": 32, "heads": 2, "layers": 2},
    }
)
FILTER = {"exclude": list(DEFAULT_EXCLUDE), "include_layernorm": True, "matrices_only": False}


@pytest.fixture(scope="module")
def files(tmp_path_factory, small_shards):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("keep")
    model = d / "model"
    save_clip(open_clip.CLIP(**SMALL), SMALL, model, {"source": "test"})
    select_sets(small_shards, {"name": "Mira Castell"}, 120, 0, d / "forget.tar", d / "retain.tar", d / "s.json")
    out = {}
    for keep in ("all", "candidates"):
        for which, loss in (("forget", "cosine"), ("retain", "contrastive")):
            out[keep, which] = d / f"{keep}_{which}.safetensors"
            compute_set_gradients(
                model, d / f"{which}.tar", out[keep, which], which=which, loss=loss, batch_size=64,
                keep=keep, candidate_filter=FILTER if keep == "candidates" else None,
            )  # fmt: skip
    return model, out


def test_candidates_file_holds_exactly_the_candidate_tensors(files):
    model, out = files
    params = dict(load_clip(model).model.named_parameters())
    expected = {n for n, p in params.items() if is_candidate(n, DEFAULT_EXCLUDE, True, ndim=p.ndim)}
    assert candidate_names(load_clip(model).model, FILTER) == expected
    assert 0 < len(expected) < len(params)
    full, meta_all = load_gradients(out["all", "forget"])
    some, meta = load_gradients(out["candidates", "forget"])
    assert set(some) == expected and set(full) == set(params)
    # the same numbers as the full file: the other parameters were only frozen
    for n in expected:
        assert torch.equal(some[n], full[n]), n
    assert meta["keep"] == "candidates" and meta_all["keep"] == "all"
    assert json.loads(meta["candidate_filter"]) == FILTER
    assert int(meta["left_out"]) == len(params) - len(expected)
    assert int(meta["left_out_numel"]) == sum(p.numel() for n, p in params.items() if n not in expected)
    norms = json.loads(meta["norms"])
    assert set(norms) == expected
    for n in expected:
        assert norms[n] == pytest.approx(float(full[n].double().norm()), rel=1e-7)
    assert meta["mean_loss"] == meta_all["mean_loss"] and meta["samples"] == meta_all["samples"]


def test_layer_analysis_is_the_same_for_candidate_layers(files):
    model, out = files
    weights = model / "open_clip_model.safetensors"
    full = analyse(out["all", "forget"], out["all", "retain"], weights).set_index("name")
    some = analyse(out["candidates", "forget"], out["candidates", "retain"], weights).set_index("name")
    cands = full.index[full["candidate"]]
    assert set(some.index) == set(full.index[[is_candidate(n) for n in full.index]])
    pd.testing.assert_frame_equal(some.loc[cands], full.loc[cands])
    assert some.loc[some["pareto"]].index.tolist() == full.loc[full["pareto"]].index.tolist()


def test_other_filters_and_salun_masks_refuse_candidate_files(files, tmp_path):
    model, out = files
    weights = model / "open_clip_model.safetensors"
    # an analysis that would consider biases too needs their gradients
    with pytest.raises(InputFileError, match="gradients.keep: candidates.*bias"):
        analyse(out["candidates", "forget"], out["candidates", "retain"], weights, exclude=("embedding",))
    with pytest.raises(InputFileError, match="gradients.keep: all"):
        salun_masks(
            {"grad_forget": out["candidates", "forget"]},
            {"salun_0.5": tmp_path / "m.safetensors"},
            {"fractions": [0.5], "rank_among": "all"},
        )
    assert not (tmp_path / "m.safetensors").exists()
    with pytest.raises(UnlearnflowError, match="keep 'some' unknown"):
        compute_set_gradients(model, tmp_path / "x.tar", tmp_path / "x.st", which="forget", loss="cosine", batch_size=8, keep="some")
