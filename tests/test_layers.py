"""SLUG layer selection: metrics, candidate rules, Pareto fronts, analyse(), plot, stage."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from unlearnflow import layers
from unlearnflow.io import InputFileError, UnlearnflowError, read_parquet
from unlearnflow.layers import (
    COLUMNS,
    alignment,
    analyse,
    importance,
    is_candidate,
    is_layernorm,
    pareto_front,
    pareto_plot,
    short_name,
    tower,
)
from unlearnflow.stages.gradients import layer_analysis

# ---------------------------------------------------------------- metrics


def test_importance_345():
    grad = torch.tensor([[3.0, 0.0], [0.0, 4.0]])  # norm 5
    theta = torch.tensor([[0.0, 10.0]])  # norm 10
    assert importance(grad, theta) == pytest.approx(0.5, abs=1e-15)
    assert importance(np.array([3.0, 4.0]), np.array([1.0])) == pytest.approx(5.0)


def test_importance_zero_theta_is_nan_and_zero_grad_is_zero():
    assert math.isnan(importance(torch.ones(3), torch.zeros(3)))
    assert importance(torch.zeros(3), torch.ones(3)) == 0.0


def test_importance_fp64_accumulation():
    # fp32 sum of squares of 1e-30 underflows to 0; fp64 does not
    g = torch.full((1000,), 1e-30, dtype=torch.float32)
    assert importance(g, torch.ones(1)) == pytest.approx(1e-30 * math.sqrt(1000), rel=1e-6)


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([1.0, 0.0], [0.0, 2.0], 0.0),  # orthogonal
        ([1.0, 2.0], [2.0, 4.0], 1.0),  # parallel
        ([1.0, 2.0], [-3.0, -6.0], -1.0),  # antiparallel
        ([3.0, 4.0], [4.0, 3.0], 24 / 25),  # 3-4-5
        ([3.0, 4.0], [-4.0, 3.0], 0.0),
    ],
)
def test_alignment_known_values(a, b, expected):
    assert alignment(torch.tensor(a), torch.tensor(b)) == pytest.approx(expected, abs=1e-12)


def test_alignment_flattens_and_is_clipped_and_signed():
    g = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
    assert alignment(g, g.clone()) == 1.0  # clipped to exactly 1, not 1+eps
    assert alignment(g, -g) == -1.0
    assert alignment(g, g.T.contiguous().T) == 1.0  # same values, other strides
    assert alignment(g.reshape(-1), g.reshape(5, 7)) == 1.0


def test_alignment_zero_norm_is_nan():
    assert math.isnan(alignment(torch.zeros(4), torch.ones(4)))
    assert math.isnan(alignment(torch.ones(4), torch.zeros(4)))


def test_chunked_accumulation_matches(monkeypatch):
    monkeypatch.setattr(layers, "_CHUNK", 7)  # many chunks, a ragged last one
    g = torch.randn(10, 11, generator=torch.Generator().manual_seed(1))
    r = torch.randn(10, 11, generator=torch.Generator().manual_seed(2))
    gd, rd = g.double().reshape(-1), r.double().reshape(-1)
    assert layers.norm(g) == pytest.approx(float(gd.norm()), rel=1e-12)
    assert alignment(g, r) == pytest.approx(float(gd @ rd / gd.norm() / rd.norm()), rel=1e-12)


# ---------------------------------------------------------------- names

# open_clip ViT-B-32 parameter names (as model.named_parameters() gives them)
VIT_B_32 = {
    "positional_embedding": 2,
    "text_projection": 2,
    "logit_scale": 0,
    "visual.class_embedding": 1,
    "visual.positional_embedding": 2,
    "visual.proj": 2,
    "visual.conv1.weight": 4,
    "visual.ln_pre.weight": 1,
    "visual.ln_pre.bias": 1,
    "visual.transformer.resblocks.0.ln_1.weight": 1,
    "visual.transformer.resblocks.0.ln_1.bias": 1,
    "visual.transformer.resblocks.0.attn.in_proj_weight": 2,
    "visual.transformer.resblocks.0.attn.in_proj_bias": 1,
    "visual.transformer.resblocks.0.attn.out_proj.weight": 2,
    "visual.transformer.resblocks.0.attn.out_proj.bias": 1,
    "visual.transformer.resblocks.11.ln_2.weight": 1,
    "visual.transformer.resblocks.11.mlp.c_fc.weight": 2,
    "visual.transformer.resblocks.11.mlp.c_fc.bias": 1,
    "visual.transformer.resblocks.11.mlp.c_proj.weight": 2,
    "visual.ln_post.weight": 1,
    "visual.ln_post.bias": 1,
    "transformer.resblocks.0.ln_1.weight": 1,
    "transformer.resblocks.0.attn.in_proj_weight": 2,
    "transformer.resblocks.0.attn.in_proj_bias": 1,
    "transformer.resblocks.0.attn.out_proj.weight": 2,
    "transformer.resblocks.5.mlp.c_fc.weight": 2,
    "transformer.resblocks.5.mlp.c_proj.weight": 2,
    "transformer.resblocks.5.mlp.c_proj.bias": 1,
    "token_embedding.weight": 2,
    "ln_final.weight": 1,
    "ln_final.bias": 1,
}

DEFAULT_CANDIDATES = {
    "text_projection",
    "visual.proj",
    "visual.conv1.weight",
    "visual.ln_pre.weight",
    "visual.transformer.resblocks.0.ln_1.weight",
    "visual.transformer.resblocks.0.attn.in_proj_weight",
    "visual.transformer.resblocks.0.attn.out_proj.weight",
    "visual.transformer.resblocks.11.ln_2.weight",
    "visual.transformer.resblocks.11.mlp.c_fc.weight",
    "visual.transformer.resblocks.11.mlp.c_proj.weight",
    "visual.ln_post.weight",
    "transformer.resblocks.0.ln_1.weight",
    "transformer.resblocks.0.attn.in_proj_weight",
    "transformer.resblocks.0.attn.out_proj.weight",
    "transformer.resblocks.5.mlp.c_fc.weight",
    "transformer.resblocks.5.mlp.c_proj.weight",
    "ln_final.weight",
}
LAYERNORMS = {n for n in DEFAULT_CANDIDATES if ".ln" in n or n.startswith("ln_")}


def test_tower_of_open_clip_names():
    for name in VIT_B_32:
        expected = "shared" if name == "logit_scale" else ("visual" if name.startswith("visual.") else "text")
        assert tower(name) == expected, name
    assert tower("logit_bias") == "shared"
    assert tower("token_embedding.weight") == "text"
    assert tower("text_projection") == "text"


def test_candidates_default_rules():
    got = {n for n in VIT_B_32 if is_candidate(n)}
    assert got == DEFAULT_CANDIDATES


def test_candidates_without_layernorm():
    got = {n for n in VIT_B_32 if is_candidate(n, include_layernorm=False)}
    assert got == DEFAULT_CANDIDATES - LAYERNORMS
    assert len(LAYERNORMS) == 6


def test_candidates_matrices_only():
    got = {n for n, d in VIT_B_32.items() if is_candidate(n, ndim=d, matrices_only=True)}
    assert got == DEFAULT_CANDIDATES - LAYERNORMS  # every LN weight is 1-D here
    assert "visual.conv1.weight" in got  # 4-D counts
    with pytest.raises(ValueError, match="ndim"):
        is_candidate("visual.proj", matrices_only=True)


def test_candidates_custom_exclude_and_shared_always_out():
    assert not is_candidate("logit_scale", exclude=())
    assert is_candidate("token_embedding.weight", exclude=("bias",))
    assert not is_candidate("visual.proj", exclude="proj")  # a bare string is one pattern
    assert is_candidate("visual.proj", exclude=None)  # None = defaults
    assert not is_candidate("visual.transformer.resblocks.0.attn.in_proj_bias", exclude=None)


@pytest.mark.parametrize(
    "name, ln",
    [
        ("visual.ln_pre.weight", True),
        ("ln_final.weight", True),
        ("transformer.resblocks.3.ln_2.bias", True),
        ("encoder.layers.0.layer_norm1.weight", True),  # HF CLIP naming
        ("blocks.0.norm1.weight", True),  # timm naming
        ("visual.transformer.resblocks.0.attn.in_proj_weight", False),
        ("text_projection", False),
        ("kiln_final.weight", False),
    ],
)
def test_is_layernorm(name, ln):
    assert is_layernorm(name) is ln


@pytest.mark.parametrize(
    "name, short",
    [
        ("visual.transformer.resblocks.3.attn.in_proj_weight", "v.rb3.attn.in_proj_w"),
        ("transformer.resblocks.0.mlp.c_fc.weight", "t.rb0.mlp.c_fc"),
        ("visual.proj", "v.proj"),
        ("text_projection", "t.text_projection"),
        ("ln_final.bias", "t.ln_final.b"),
        ("logit_scale", "logit_scale"),
    ],
)
def test_short_name(name, short):
    assert short_name(name) == short


# ---------------------------------------------------------------- Pareto


def brute_front(imp, al):
    imp, al = np.asarray(imp, float), np.asarray(al, float)
    out = []
    for i in range(len(imp)):
        if np.isnan(imp[i]) or np.isnan(al[i]):
            out.append(False)
            continue
        out.append(not any((al[j] < al[i]) and (imp[j] > imp[i]) for j in range(len(imp))))
    return np.array(out, dtype=bool)


def test_pareto_hand_made():
    #            a     b     c     d     e
    al = [0.10, 0.20, 0.30, 0.05, 0.40]
    imp = [1.00, 2.00, 0.50, 0.20, 3.00]
    # c is dominated by a and b; the others are not
    assert pareto_front(imp, al).tolist() == [True, True, False, True, True]


def test_pareto_ties():
    # identical points: both on the front
    assert pareto_front([1.0, 1.0], [0.5, 0.5]).tolist() == [True, True]
    # equal alignment, higher importance: does not dominate
    assert pareto_front([1.0, 2.0], [0.5, 0.5]).tolist() == [True, True]
    # equal importance, lower alignment: does not dominate (strict)
    assert pareto_front([1.0, 1.0], [0.1, 0.5]).tolist() == [True, True]
    # strictly better in both: dominates
    assert pareto_front([2.0, 1.0], [0.1, 0.5]).tolist() == [True, False]
    # a dominator tied with another point dominates both targets
    assert pareto_front([3.0, 3.0, 1.0, 1.0], [0.0, 0.0, 0.2, 0.2]).tolist() == [True, True, False, False]


def test_pareto_nan_and_negative_and_empty():
    imp = [np.nan, 1.0, 5.0, 2.0, 0.5]
    al = [-1.0, 0.3, np.nan, -0.2, -0.5]
    # NaN points are off the front and dominate nothing (the NaN-alignment
    # point of importance 5 would otherwise dominate the others); the negative
    # alignments are ordinary values: (-0.2, 2) dominates (0.3, 1)
    assert pareto_front(imp, al).tolist() == [False, False, False, True, True]
    assert pareto_front([], []).tolist() == []
    with pytest.raises(ValueError):
        pareto_front([1.0], [1.0, 2.0])


def test_pareto_matches_brute_force_with_many_ties():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 30))
        imp = rng.integers(0, 5, n).astype(float)
        al = rng.integers(-3, 3, n).astype(float)
        imp[rng.random(n) < 0.1] = np.nan
        al[rng.random(n) < 0.1] = np.nan
        np.testing.assert_array_equal(pareto_front(imp, al), brute_front(imp, al))


# ---------------------------------------------------------------- analyse()


def _params():
    """Weights, forget and retain gradients for a tiny fake open_clip model.

    Norms are chosen so that importance = ‖g_f‖/‖θ‖ and the cosines are exact.
    """
    w, f, r = {}, {}, {}

    def add(name, shape, theta_norm, gf_norm, cos):
        n = int(np.prod(shape)) if shape else 1
        assert n >= 2 or cos in (None, 1.0)
        # theta along e0; g_f along e0; g_r = cos*e0 + sin*e1 (unit), so cos(g_f, g_r) = cos
        t = torch.zeros(n)
        t[0] = theta_norm
        g = torch.zeros(n)
        g[0] = gf_norm
        h = torch.zeros(n)
        if cos is not None:
            h[0] = cos
            if n >= 2:
                h[1] = math.sqrt(max(0.0, 1 - cos * cos))
        w[name], f[name], r[name] = t.reshape(shape), g.reshape(shape), h.reshape(shape)

    # visual tower
    add("visual.conv1.weight", (4, 3, 2, 2), 2.0, 1.0, 0.5)  # imp 0.5
    add("visual.transformer.resblocks.0.attn.in_proj_weight", (6, 2), 1.0, 2.0, 0.8)  # imp 2.0
    add("visual.transformer.resblocks.0.attn.in_proj_bias", (6,), 1.0, 9.0, 0.0)  # excluded
    add("visual.transformer.resblocks.1.mlp.c_fc.weight", (4, 2), 4.0, 1.0, 0.9)  # imp 0.25, dominated
    add("visual.transformer.resblocks.10.mlp.c_proj.weight", (2, 4), 1.0, 1.0, -0.3)  # imp 1.0, negative
    add("visual.ln_post.weight", (2,), 1.0, 0.1, 0.05)  # LayerNorm, imp 0.1
    add("visual.proj", (2, 3), 1.0, 3.0, 0.95)  # imp 3.0
    add("visual.positional_embedding", (3, 2), 1.0, 5.0, 0.0)  # excluded
    # text tower
    add("token_embedding.weight", (5, 2), 1.0, 7.0, 0.0)  # excluded
    add("transformer.resblocks.0.attn.out_proj.weight", (2, 2), 1.0, 1.0, 0.2)  # imp 1.0
    add("transformer.resblocks.0.mlp.c_fc.weight", (4, 2), 2.0, 1.0, 0.6)  # imp 0.5, dominated
    add("text_projection", (2, 2), 1.0, 4.0, 0.7)  # imp 4.0
    add("ln_final.weight", (2,), 1.0, 2.0, 0.1)  # LayerNorm, imp 2.0
    # shared
    add("logit_scale", (), 4.6, 0.2, 1.0)
    return w, f, r


def _write(tmp_path, w, f, r, fmeta=None, rmeta=None):
    paths = tmp_path / "forget.safetensors", tmp_path / "retain.safetensors", tmp_path / "open_clip_model.safetensors"
    save_file(f, paths[0], metadata=fmeta if fmeta is not None else {"set": "forget", "loss": "cosine", "samples": "12"})
    save_file(r, paths[1], metadata=rmeta if rmeta is not None else {"set": "retain", "loss": "clip", "samples": "40"})
    save_file(w, paths[2])
    return paths


@pytest.fixture
def files(tmp_path):
    return _write(tmp_path, *_params())


def _row(df, name):
    return df.set_index("name").loc[name]


def test_analyse_columns_and_values(files):
    df = analyse(*files)
    assert list(df.columns) == COLUMNS
    assert len(df) == 14
    # natural order: resblocks.10 after resblocks.1
    names = df["name"].tolist()
    assert names.index("visual.transformer.resblocks.10.mlp.c_proj.weight") > names.index(
        "visual.transformer.resblocks.1.mlp.c_fc.weight"
    )
    assert df["candidate"].dtype == bool and df["pareto"].dtype == bool
    assert df["front_rank"].dtype == np.int64 and df["numel"].dtype == np.int64

    r = _row(df, "visual.conv1.weight")
    assert r.tower == "visual" and r["shape"] == "4x3x2x2" and r.numel == 48
    assert r.param_norm == pytest.approx(2.0) and r.grad_forget_norm == pytest.approx(1.0)
    assert r.grad_retain_norm == pytest.approx(1.0)
    assert r.importance == pytest.approx(0.5) and r.alignment == pytest.approx(0.5)
    assert r.abs_alignment == pytest.approx(0.5)

    r = _row(df, "visual.transformer.resblocks.10.mlp.c_proj.weight")
    assert r.alignment == pytest.approx(-0.3) and r.abs_alignment == pytest.approx(0.3)
    assert r["shape"] == "2x4"

    r = _row(df, "logit_scale")
    assert r.tower == "shared" and r["shape"] == "scalar" and r.numel == 1
    assert not r.candidate and not r.pareto and r.front_rank == -1
    assert r.alignment == pytest.approx(1.0) and r.importance == pytest.approx(0.2 / 4.6)

    assert _row(df, "token_embedding.weight").tower == "text"
    assert _row(df, "ln_final.weight").tower == "text"

    expected_candidates = {
        "visual.conv1.weight",
        "visual.transformer.resblocks.0.attn.in_proj_weight",
        "visual.transformer.resblocks.1.mlp.c_fc.weight",
        "visual.transformer.resblocks.10.mlp.c_proj.weight",
        "visual.ln_post.weight",
        "visual.proj",
        "transformer.resblocks.0.attn.out_proj.weight",
        "transformer.resblocks.0.mlp.c_fc.weight",
        "text_projection",
        "ln_final.weight",
    }
    assert set(df.loc[df["candidate"], "name"]) == expected_candidates


def _front(df, tower_name):
    sub = df[(df["tower"] == tower_name) & df["pareto"]].sort_values("front_rank")
    return sub["name"].tolist()


def test_analyse_signed_fronts_per_tower(files):
    df = analyse(*files, use_abs_alignment=False)
    # visual (alignment, importance): c_proj (-0.3, 1.0) dominates conv1
    # (0.5, 0.5), c_fc (0.9, 0.25) and ln_post (0.05, 0.1); in_proj (0.8, 2.0)
    # and proj (0.95, 3.0) are not dominated
    assert _front(df, "visual") == [
        "visual.proj",
        "visual.transformer.resblocks.0.attn.in_proj_weight",
        "visual.transformer.resblocks.10.mlp.c_proj.weight",
    ]
    # text: ln_final (0.1, 2.0), text_projection (0.7, 4.0); out_proj (0.2, 1.0)
    # and c_fc (0.6, 0.5) dominated by ln_final
    assert _front(df, "text") == ["text_projection", "ln_final.weight"]
    assert df.loc[df["pareto"], "front_rank"].min() == 0
    assert (df.loc[~df["pareto"], "front_rank"] == -1).all()
    assert not (df["pareto"] & ~df["candidate"]).any()
    # per-tower fronts: text's best importance (4.0) does not dominate visual layers
    assert _row(df, "visual.proj").front_rank == 0 and _row(df, "text_projection").front_rank == 0


def test_analyse_abs_alignment_changes_the_front(files):
    df = analyse(*files)  # the reference's |cos| is the default
    assert df.equals(analyse(*files, use_abs_alignment=True))
    # |alignment| of c_proj is 0.3 > 0.05: ln_post (0.05, 0.1) joins the front;
    # conv1 (0.5, 0.5) is still dominated by c_proj (0.3, 1.0)
    assert _front(df, "visual") == [
        "visual.proj",
        "visual.transformer.resblocks.0.attn.in_proj_weight",
        "visual.transformer.resblocks.10.mlp.c_proj.weight",
        "visual.ln_post.weight",
    ]
    # signed alignment is stored either way
    assert _row(df, "visual.transformer.resblocks.10.mlp.c_proj.weight").alignment == pytest.approx(-0.3)
    assert _front(df, "text") == ["text_projection", "ln_final.weight"]


def test_analyse_abs_front_equals_brute_force_front_on_abs_cos(tmp_path):
    # random layers with signed cosines: analyse()'s |cos| front per tower is
    # exactly the brute-force front on (importance, |cos|), and differs from
    # the signed one
    rng = np.random.default_rng(3)
    w, f, r = {}, {}, {}
    for tower in ("visual.transformer", "transformer"):
        for i in range(40):
            name = f"{tower}.resblocks.{i}.mlp.c_fc.weight"
            w[name] = torch.from_numpy(rng.normal(size=(3, 4))).float()
            f[name] = torch.from_numpy(rng.normal(size=(3, 4)) * rng.uniform(0.1, 3)).float()
            r[name] = (-0.8 * f[name] + torch.from_numpy(rng.normal(size=(3, 4))).float() * rng.uniform(0.1, 2)) * rng.choice([-1, 1])
    df = analyse(*_write(tmp_path, w, f, r))
    signed = analyse(*_write(tmp_path, w, f, r), use_abs_alignment=False)
    assert (df["alignment"] < 0).sum() > 10 and (df["alignment"] > 0).sum() > 10
    for tower in ("visual", "text"):
        sub = df[df["tower"] == tower]
        want = brute_front(sub["importance"].to_numpy(), np.abs(sub["alignment"].to_numpy()))
        np.testing.assert_array_equal(sub["pareto"].to_numpy(), want)
        np.testing.assert_array_equal(
            signed[signed["tower"] == tower]["pareto"].to_numpy(),
            brute_front(sub["importance"].to_numpy(), sub["alignment"].to_numpy()),
        )
    assert not df["pareto"].equals(signed["pareto"])


def test_analyse_without_layernorm_and_matrices_only(files):
    df = analyse(*files, include_layernorm=False)
    assert not _row(df, "ln_final.weight").candidate
    # with ln_final gone, out_proj (0.2, 1.0) joins the text front; c_fc (0.6, 0.5) stays dominated
    assert _front(df, "text") == ["text_projection", "transformer.resblocks.0.attn.out_proj.weight"]
    df2 = analyse(*files, matrices_only=True)
    assert set(df2.loc[df2["candidate"], "name"]) == set(df.loc[df["candidate"], "name"])
    df3 = analyse(*files, exclude=["bias", "logit_scale", "position"])  # embeddings allowed
    assert _row(df3, "token_embedding.weight").candidate
    assert _front(df3, "text")[0] == "token_embedding.weight"  # cos 0, importance 7


def test_analyse_zero_theta_and_zero_retain_grad_are_not_candidates(tmp_path):
    w, f, r = _params()
    w["visual.proj"] = torch.zeros_like(w["visual.proj"])
    r["text_projection"] = torch.zeros_like(r["text_projection"])
    df = analyse(*_write(tmp_path, w, f, r))
    p, t = _row(df, "visual.proj"), _row(df, "text_projection")
    assert math.isnan(p.importance) and not p.candidate and not p.pareto
    assert math.isnan(t.alignment) and math.isnan(t.abs_alignment) and not t.candidate
    assert _front(df, "text") == ["ln_final.weight"]


def test_analyse_mismatched_names(tmp_path):
    w, f, r = _params()
    del r["visual.proj"]
    paths = _write(tmp_path, w, f, r)
    with pytest.raises(UnlearnflowError, match=r"names differ.*forget\.safetensors.*retain\.safetensors.*visual\.proj"):
        analyse(*paths)


def test_analyse_weights_missing_a_gradient_name(tmp_path):
    w, f, r = _params()
    del w["text_projection"]
    paths = _write(tmp_path, w, f, r)
    with pytest.raises(UnlearnflowError, match=r"names differ.*forget\.safetensors.*open_clip_model\.safetensors.*first: \['text_projection'\]"):
        analyse(*paths)


def test_analyse_weights_may_hold_more(tmp_path):
    # gradients restricted to some parameters (gradients.py's `names`), or buffers in the state dict
    w, f, r = _params()
    w["visual.attn_mask_buffer"] = torch.ones(3, 3)
    for k in ("visual.conv1.weight", "ln_final.weight"):
        del f[k], r[k]
    df = analyse(*_write(tmp_path, w, f, r))
    assert len(df) == 12 and "visual.attn_mask_buffer" not in set(df["name"])


def test_analyse_mismatched_shapes(tmp_path):
    w, f, r = _params()
    w["text_projection"] = torch.ones(2, 3)
    paths = _write(tmp_path, w, f, r)
    with pytest.raises(UnlearnflowError, match=r"shapes differ.*open_clip_model\.safetensors.*text_projection is \[2, 2\] vs \[2, 3\]"):
        analyse(*paths)


def test_analyse_swapped_sets(tmp_path):
    w, f, r = _params()
    paths = _write(tmp_path, w, f, r)
    # the error names the file given in the wrong role
    with pytest.raises(InputFileError, match=r"retain\.safetensors: .*set='retain', expected 'forget'.*swapped"):
        analyse(paths[1], paths[0], paths[2])
    with pytest.raises(InputFileError, match=r"forget\.safetensors: .*set='forget', expected 'retain'.*swapped"):
        analyse(paths[0], paths[0], paths[2])
    save_file(f, tmp_path / "odd.safetensors", metadata={"set": "test"})
    with pytest.raises(InputFileError, match=r"odd\.safetensors: .*set='test', expected 'forget'"):
        analyse(tmp_path / "odd.safetensors", paths[1], paths[2])
    # metadata without "set" is accepted
    paths = _write(tmp_path, w, f, r, fmeta={}, rmeta={"loss": "clip"})
    assert len(analyse(*paths)) == 14


def test_analyse_all_zero_forget_gradient(tmp_path):
    w, f, r = _params()
    f = {k: torch.zeros_like(v) for k, v in f.items()}
    with pytest.raises(InputFileError, match=r"forget\.safetensors.*zero for every parameter"):
        analyse(*_write(tmp_path, w, f, r))


def test_analyse_non_finite_and_bad_files(tmp_path):
    w, f, r = _params()
    f["visual.proj"][0, 0] = float("nan")
    paths = _write(tmp_path, w, f, r)
    with pytest.raises(InputFileError, match=r"forget\.safetensors.*visual\.proj.*non-finite"):
        analyse(*paths)
    with pytest.raises(InputFileError, match="file not found"):
        analyse(tmp_path / "nope.safetensors", paths[1], paths[2])
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors")
    with pytest.raises(InputFileError, match="junk.safetensors: not a readable safetensors"):
        analyse(paths[0], paths[1], junk)


def test_analyse_no_candidates(files):
    with pytest.raises(UnlearnflowError, match="no candidate"):
        analyse(*files, exclude=["weight", "proj", "embedding"])


# ---------------------------------------------------------------- plot & stage


def test_pareto_plot_png_written_atomically(files, tmp_path):
    df = analyse(*files)
    out = tmp_path / "plots" / "pareto.png"
    pareto_plot(df, out, title="test")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000
    assert [p.name for p in out.parent.iterdir()] == ["pareto.png"]  # no temp files left


def test_pareto_plot_failure_leaves_nothing(files, tmp_path, monkeypatch):
    df = analyse(*files)
    out = tmp_path / "p" / "pareto.png"

    def boom(*a, **k):
        raise RuntimeError("disk full")

    from matplotlib.figure import Figure

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(RuntimeError):
        pareto_plot(df, out)
    assert list(out.parent.iterdir()) == []


def test_pareto_plot_edge_cases(files, tmp_path):
    df = analyse(*files)
    # a tower without candidates, and points with a zero coordinate
    df.loc[df["tower"] == "text", "candidate"] = False
    df.loc[df["name"] == "visual.conv1.weight", "alignment"] = 0.0
    out = tmp_path / "edge.png"
    pareto_plot(df, out, use_abs_alignment=True)
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_layer_analysis_stage(files, tmp_path, capsys):
    out = {"table": tmp_path / "res" / "layers.parquet", "plot": tmp_path / "res" / "layers.png"}
    inp = dict(zip(("grad_forget", "grad_retain", "weights"), map(str, files)))
    layer_analysis(inp, out, {"use_abs_alignment": True, "exclude": ["bias", "logit_scale", "position", "embedding"],
                              "include_layernorm": True, "matrices_only": False, "threads": 1})  # fmt: skip
    df = read_parquet(out["table"])
    assert list(df.columns) == COLUMNS
    assert df.loc[df["pareto"], "name"].tolist() and "visual.ln_post.weight" in set(df.loc[df["pareto"], "name"])
    assert out["plot"].read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in out["table"].parent.iterdir()) == ["layers.parquet", "layers.png"]
    printed = capsys.readouterr().out
    assert "visual: v.proj" in printed and "text: t.text_projection" in printed
    assert "|alignment|" in printed


def test_stage_is_importable_by_cli_convention():
    import importlib

    from unlearnflow.registry import STAGES

    mod, func = STAGES["layer_analysis"].split(":")
    assert getattr(importlib.import_module(mod), func) is layer_analysis
