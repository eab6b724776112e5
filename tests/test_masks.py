"""SalUn masks: the global top-|g| rule, its tie order, nesting, exclusion, files and the stage."""

import pytest
import torch

from unlearnflow.gradients import save_gradients
from unlearnflow.io import InputFileError, UnlearnflowError
from unlearnflow.masks import (
    FORMAT,
    global_topk_masks,
    iter_topk_masks,
    load_mask,
    out_key,
    save_mask,
)
from unlearnflow.stages.gradients import salun_masks

FRACTIONS = [round(0.1 * i, 1) for i in range(1, 11)]


def kept(masks):
    return sum(int(m.sum()) for m in masks.values())


def random_grads(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "visual.a.weight": torch.randn(7, 13, generator=g),
        "visual.b.bias": torch.randn(5, generator=g),
        "text.c.weight": torch.randn(3, 3, 3, generator=g),
    }


def write_grads(path, grads, set_="forget"):
    save_gradients(path, grads, {"format": "unlearnflow.gradients/1", "set": set_, "loss": "cosine"})
    return path


def test_threshold_is_global_not_per_layer():
    grads = {"big": torch.full((4, 5), 3.0) + torch.rand(4, 5), "small": -torch.rand(20) * 0.5}
    masks, info = global_topk_masks(grads, [0.5], exclude=())[0.5]
    assert info["kept"] == 20 and info["total"] == 40
    assert masks["big"].all()  # a per-layer rule would keep only half of each
    assert not masks["small"].any()
    assert masks["big"].shape == (4, 5) and masks["big"].dtype == torch.bool


def test_realised_fraction_is_round_f_n_over_n():
    grads = random_grads()
    n = 7 * 13 + 5 + 27
    out = global_topk_masks(grads, FRACTIONS, exclude=())
    allabs = torch.cat([g.abs().reshape(-1) for g in grads.values()])
    for f in FRACTIONS:
        masks, info = out[f]
        k = round(f * n)
        assert kept(masks) == info["kept"] == k and info["total"] == n
        assert info["realised_fraction"] == k / n
        assert abs(info["realised_fraction"] - f) <= 0.5 / n
        # the kept weights are exactly the k largest |g| (no ties in random data)
        sel = torch.cat([grads[p].abs()[masks[p]] for p in grads])
        assert sel.min() == info["threshold"] == allabs.topk(k).values.min()


def test_full_fraction_keeps_all_and_bad_fractions_are_rejected():
    grads = random_grads()
    masks, info = global_topk_masks(grads, [1.0], exclude=())[1.0]
    assert all(m.all() for m in masks.values()) and info["realised_fraction"] == 1.0
    for bad in ([0.0], [1.5], [-0.1], [float("nan")], [], [0.5, 0.5], ["0.5"]):
        with pytest.raises(UnlearnflowError):
            global_topk_masks(grads, bad)
    with pytest.raises(UnlearnflowError, match="nothing to unlearn"):
        global_topk_masks({"w": torch.ones(10)}, [0.01])  # round(0.1) = 0 weights


def test_ties_take_exactly_k_in_name_then_index_order():
    grads = {"b": torch.full((2, 3), -2.0), "a": torch.full((4,), 2.0), "c": torch.tensor([5.0, 2.0, 0.0])}
    # |g|: c has one 5, then 2.0 ties: a (4), b (6), c[1] (1) -> 11 ties; N = 13
    out = global_topk_masks(grads, [0.5], exclude=())  # k = round(6.5) = 6 (round half to even)
    masks, info = out[0.5]
    assert info["kept"] == 6 and info["above_threshold"] == 1 and info["at_threshold"] == 11
    assert masks["a"].all()  # "a" < "b" < "c": a's 4 ties first, then b's first one
    assert masks["b"].reshape(-1).tolist() == [True, False, False, False, False, False]
    assert masks["c"].tolist() == [True, False, False]
    again = global_topk_masks(dict(reversed(list(grads.items()))), [0.5], exclude=())[0.5][0]
    assert all(torch.equal(again[n], masks[n]) for n in grads)  # dict order does not matter


def test_zeros_only_when_k_exceeds_nonzero_count():
    grads = {"a_zero": torch.zeros(6), "b": torch.tensor([0.0, 1.0, 0.0, 2.0]), "c_zero": torch.zeros(2, 3)}
    # N = 16, non-zero = 2
    out = global_topk_masks(grads, [0.125, 0.25, 0.5625], exclude=())
    m, info = out[0.125]  # k = 2: exactly the two non-zeros
    assert m["b"].tolist() == [False, True, False, True] and not m["a_zero"].any() and not m["c_zero"].any()
    assert info["nonzero"] == 2 and info["ties_taken"] == 1  # the threshold is 1.0, itself one "tie"
    m, info = out[0.25]  # k = 4: the two non-zeros, then zeros from "a_zero" indices 0, 1
    assert info["threshold"] == 0.0 and info["ties_taken"] == 2
    assert m["a_zero"].tolist() == [True, True, False, False, False, False]
    assert m["b"].tolist() == [False, True, False, True] and not m["c_zero"].any()
    m, _ = out[0.5625]  # k = 9: all 6 of a_zero, then b's first zero (index 0), c_zero still out
    assert m["a_zero"].all() and m["b"].tolist() == [True, True, False, True] and not m["c_zero"].any()


def test_rank_among_nonzero_makes_every_fraction_count_when_most_weights_have_no_gradient():
    """An embedding whose rows got no forget gradient: under the reference's
    global rank every fraction above the non-zero share keeps the same
    weights; ranked among the non-zero saliencies, f means f of those."""
    g = torch.Generator().manual_seed(0)
    grads = {"token_embedding.weight": torch.zeros(90, 10), "visual.w": torch.randn(100, generator=g)}
    grads["token_embedding.weight"][3] = torch.randn(10, generator=g)  # one caption's token row
    fr = [0.2, 0.5, 1.0]
    ref = global_topk_masks(grads, fr, exclude=())
    nz = global_topk_masks(grads, fr, exclude=(), rank_among="nonzero")
    # all: 0.2 of 1,000 = 200 > the 110 non-zeros, so every salient weight plus zeros
    assert ref[0.2][1]["kept"] == 200 and ref[0.2][1]["ties_taken"] == 90
    assert all(int(m["visual.w"].sum()) == 100 for m, _ in ref.values())  # the same salient weights each time
    # nonzero: f of the 110 salient weights, so the fractions differ
    assert [nz[f][1]["kept"] for f in fr] == [22, 55, 110] and nz[1.0][1]["realised_fraction"] == 1.0
    assert int(nz[0.2][0]["visual.w"].sum()) < int(nz[0.5][0]["visual.w"].sum()) < 100
    # the kept ones are the largest |g| of all salient weights, the zero rows never
    salient = torch.cat([grads["visual.w"].abs(), grads["token_embedding.weight"][3].abs()])
    t = salient.sort().values[-22]
    assert int((grads["visual.w"].abs() >= t).sum()) == int(nz[0.2][0]["visual.w"].sum())
    assert not nz[1.0][0]["token_embedding.weight"][0].any() and nz[1.0][0]["token_embedding.weight"][3].all()
    with pytest.raises(UnlearnflowError, match="rank_among"):
        global_topk_masks(grads, fr, exclude=(), rank_among="some")


def test_masks_are_nested():
    grads = random_grads(1)
    grads["ties"] = torch.tensor([0.5] * 20 + [0.0] * 10)
    out = global_topk_masks(grads, FRACTIONS, exclude=())
    for small, large in zip(FRACTIONS, FRACTIONS[1:]):
        for n in grads:
            assert not (out[small][0][n] & ~out[large][0][n]).any()
    m3, m6 = out[0.3][0], out[0.6][0]
    assert all((m3[n] <= m6[n]).all() for n in grads)
    # one fraction at a time gives the same masks
    for f, masks, _ in iter_topk_masks(grads, [0.3, 0.6], exclude=()):
        assert all(torch.equal(masks[n], out[f][0][n]) for n in grads)


def test_excluded_parameters_are_false_and_not_counted():
    grads = random_grads()
    grads["logit_scale"] = torch.tensor(100.0)  # would be the most salient weight
    out = global_topk_masks(grads, [0.1, 1.0])  # default exclude: logit_scale
    for f in (0.1, 1.0):
        masks, info = out[f]
        assert masks["logit_scale"].shape == () and not masks["logit_scale"]
        assert info["total"] == 123 and info["excluded"] == ["logit_scale"]
    assert kept(out[1.0][0]) == 123
    with pytest.raises(UnlearnflowError, match="no weights"):
        global_topk_masks({"logit_scale": torch.tensor(1.0)}, [0.5])


def test_nan_gradient_names_the_parameter():
    grads = random_grads()
    grads["text.c.weight"][1, 1, 1] = float("nan")
    with pytest.raises(UnlearnflowError, match="text.c.weight"):
        global_topk_masks(grads, [0.5])


def test_save_load_round_trip_and_truncated_file(tmp_path):
    grads = random_grads()
    masks, info = global_topk_masks(grads, [0.3])[0.3]
    path = tmp_path / "m.safetensors"
    save_mask(path, masks, {"fraction": "0.3", "kept": info["kept"], "source": "g.safetensors"})
    back, meta = load_mask(path)
    assert meta["format"] == FORMAT and meta["kept"] == str(info["kept"]) and meta["source"] == "g.safetensors"
    assert set(back) == set(masks) and all(torch.equal(back[n], masks[n]) for n in masks)
    assert all(back[n].dtype == torch.bool for n in back)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left behind
    data = path.read_bytes()
    bad = tmp_path / "trunc.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError, match="trunc.safetensors"):
        load_mask(bad)
    other = write_grads(tmp_path / "grad.safetensors", grads)
    with pytest.raises(InputFileError, match="grad.safetensors.*not a SalUn mask"):
        load_mask(other)
    with pytest.raises(InputFileError, match="missing.safetensors"):
        load_mask(tmp_path / "missing.safetensors")


def test_masks_stage_writes_every_fraction(tmp_path, capsys):
    grads = random_grads()
    grads["logit_scale"] = torch.tensor(3.0)
    src = write_grads(tmp_path / "grad_forget.safetensors", grads)
    fractions = [0.1, 0.5, 1.0]
    out = {out_key(f): tmp_path / "masks" / f"salun_{f}.safetensors" for f in fractions}
    assert sorted(out) == ["salun_0.1", "salun_0.5", "salun_1.0"]
    salun_masks({"grad_forget": src}, out, {"fractions": fractions, "rank_among": "all"})
    expected = global_topk_masks(grads, fractions)
    for f in fractions:
        masks, meta = load_mask(out[out_key(f)])
        info = expected[f][1]
        assert all(torch.equal(masks[n], expected[f][0][n]) for n in grads)
        assert meta["fraction"] == repr(f) and meta["kept"] == str(info["kept"]) and meta["total"] == "123"
        assert float(meta["realised_fraction"]) == info["kept"] / 123
        assert float(meta["threshold"]) == info["threshold"]
        assert meta["source"] == str(src) and "tie_rule" in meta and meta["loss"] == "cosine"
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("salun mask")]
    assert len(lines) == 3 and "kept 12/123" in lines[0]


def test_masks_stage_rejects_retain_gradients_and_mismatched_outputs(tmp_path):
    src = write_grads(tmp_path / "grad_retain.safetensors", random_grads(), set_="retain")
    out = {"salun_0.5": tmp_path / "m.safetensors"}
    with pytest.raises(InputFileError, match="grad_retain.safetensors.*'retain'"):
        salun_masks({"grad_forget": src}, out, {"fractions": [0.5], "rank_among": "all"})
    forget = write_grads(tmp_path / "grad_forget.safetensors", random_grads())
    with pytest.raises(UnlearnflowError, match="salun_0.1"):
        salun_masks({"grad_forget": forget}, out, {"fractions": [0.1, 0.5], "rank_among": "all"})
    with pytest.raises(UnlearnflowError, match="do not match"):
        salun_masks({"grad_forget": forget}, {"salun_0.50": tmp_path / "m.safetensors"}, {"fractions": [0.5], "rank_among": "all"})
    assert not (tmp_path / "m.safetensors").exists()
