"""The CLIP baselines of SLUG's tables: FT, GA, GA+FT, SalUn (one shared loop) and SSD.

A tiny random CLIP and tiny forget/retain sets; every run is a few steps."""

import math

import open_clip
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from unlearnflow.data.select import select_sets
from unlearnflow.data.shards import count_samples

from unlearnflow.gradients import accumulate_gradients, iter_batches, set_loss
from unlearnflow.io import InputFileError, UnlearnflowError
from unlearnflow.methods import MethodContext, ft, ga, ga_ft, salun, ssd
from unlearnflow.methods.finetune import _Cycler, changed_tensors, decays, epoch_plan, finetune, lr_at, snapshot
from unlearnflow.models.clip import load_clip, normalise, save_clip, tiny_config

from conftest import write_small_eval_sets
from unlearnflow.metrics.clip_eval import eval_sets_from

TINY = tiny_config(
    {
        "embed_dim": 16,
        "vision_cfg": {"width": 32, "layers": 1, "head_width": 16, "patch_size": 8},
        "text_cfg": {"width": 32, "heads": 2, "layers": 1},
    }
)
TARGET = {"id": "mira", "name": "Mira Castell", "kind": "identity"}
FAST = {"epochs": 1, "max_steps": 3, "batch_size": 16, "lr": 1e-3}
C_FC = "visual.transformer.resblocks.0.mlp.c_fc.weight"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("model")
    save_clip(open_clip.CLIP(**TINY), TINY, d, {"source": "test"})
    return d


@pytest.fixture(scope="module")
def sets(tmp_path_factory, small_shards):
    d = tmp_path_factory.mktemp("sets")
    out = {"forget": d / "forget.tar", "retain": d / "retain.tar"}
    select_sets(small_shards[:1], TARGET, 48, 0, out["forget"], out["retain"], d / "summary.json")
    return out


@pytest.fixture(scope="module")
def val_sets(tmp_path_factory):
    files = write_small_eval_sets(tmp_path_factory.mktemp("eval"), val=2, test=1)
    return eval_sets_from(files, "val")


def context(model_dir, sets, **kw):
    return MethodContext(
        bundle=load_clip(model_dir), target=TARGET, forget_tar=sets["forget"], retain_tar=sets["retain"], **kw
    )


def base_params(model_dir) -> dict:
    return {n: p.detach().clone() for n, p in load_clip(model_dir).model.named_parameters()}


@torch.no_grad()
def mean_loss(bundle, tar, kind: str, batch_size: int = 16) -> float:
    """The set's loss in fixed batches (no shuffling), no gradients."""
    m = bundle.model
    values = [
        set_loss(kind, m.encode_image(normalise(x)), m.encode_text(t), m.logit_scale).item()
        for x, t in iter_batches(tar, bundle, batch_size)
        if len(x) >= 2
    ]
    return sum(values) / len(values)


def assert_only_changed(result, base: dict):
    """A method returns exactly the tensors it changed, on the CPU, never logit_scale."""
    assert "logit_scale" not in result.tensors
    assert result.tensors, "nothing changed"
    for name, t in result.tensors.items():
        assert t.device.type == "cpu" and t.shape == base[name].shape
        assert not torch.equal(t, base[name]), f"{name} returned but unchanged"
    assert result.info["n_changed_tensors"] == len(result.tensors)


def random_mask(model_dir, path, fraction=0.5, seed=0, **meta):
    g = torch.Generator().manual_seed(seed)
    mask = {n: torch.rand(p.shape, generator=g) < fraction for n, p in base_params(model_dir).items()}
    save_file(mask, str(path), metadata={"format": "unlearnflow.mask/1", "fraction": str(fraction), **meta})
    return mask


# ------------------------------------------------------------ SalUn's mask
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_salun_leaves_every_non_salient_weight_bit_identical(model_dir, sets, tmp_path, optimizer):
    base = base_params(model_dir)
    mask = random_mask(model_dir, tmp_path / "mask.safetensors")
    params = {**FAST, "optimizer": optimizer, "weight_decay": 0.1}
    res = salun.run(context(model_dir, sets, mask=tmp_path / "mask.safetensors"), params)
    assert_only_changed(res, base)
    assert res.info["steps"] == 3
    assert res.info["mask_salient_fraction"] == pytest.approx(0.5, abs=0.01)
    assert res.info["mask_meta_fraction"] == "0.5"
    salient_moved = 0
    for name, t in res.tensors.items():
        off = ~mask[name]
        assert torch.equal(t[off], base[name][off]), f"{name}: a non-salient weight moved"
        salient_moved += int((t[mask[name]] != base[name][mask[name]]).sum())
    assert salient_moved > 1000
    assert C_FC in res.tensors


def test_salun_mask_fraction_changes_the_update(model_dir, sets, tmp_path):
    """Masks of two fractions from the same forget gradient (ranked among the
    weights with a non-zero gradient) give different deltas, the smaller
    fraction moving fewer weights."""
    from unlearnflow.masks import global_topk_masks, mask_metadata, save_mask

    bundle = load_clip(model_dir)
    grads, _ = accumulate_gradients(bundle, list(iter_batches(sets["forget"], bundle, 16)), "cosine", progress=False)
    masks = global_topk_masks(grads, [0.1, 0.5], exclude=("logit_scale",), rank_among="nonzero")
    moved = {}
    deltas = {}
    for f, (m, info) in masks.items():
        path = tmp_path / f"salun_{f}.safetensors"
        save_mask(path, m, mask_metadata(info, sets["forget"], exclude=("logit_scale",)))
        res = salun.run(context(model_dir, sets, mask=path), {**FAST, "mask_fraction": f})
        base = base_params(model_dir)
        deltas[f] = res.tensors
        moved[f] = sum(int((t != base[n]).sum()) for n, t in res.tensors.items())
    assert 0 < moved[0.1] < moved[0.5]
    common = deltas[0.1].keys() & deltas[0.5].keys()
    assert common and any(not torch.equal(deltas[0.1][n], deltas[0.5][n]) for n in common)


def test_without_restoring_weight_decay_would_move_non_salient_weights(model_dir, sets, tmp_path):
    """Masking the gradients alone is not enough: AdamW's decoupled weight decay
    shrinks the non-salient weights (by exactly prod(1 - lr_t * wd)); plain GA+FT
    moves them too. SalUn restores them (test above)."""
    mask = random_mask(model_dir, tmp_path / "mask.safetensors")
    base = base_params(model_dir)
    kw = dict(forget_weight=1.0, retain_weight=1.0, epochs=1, lr=1e-3, weight_decay=0.1, batch_size=16, max_steps=3)
    bundle = load_clip(model_dir)
    finetune(bundle, sets["forget"], sets["retain"], mask=mask, restore_masked=False, **kw)
    new = dict(bundle.model.named_parameters())[C_FC].detach()
    off = ~mask[C_FC]
    assert decays(C_FC, new)
    shrink = math.prod(1 - lr_at(s, lr=1e-3, total=3, schedule="cosine", warmup_steps=0) * 0.1 for s in range(3))
    assert not torch.equal(new[off], base[C_FC][off])
    torch.testing.assert_close(new[off], base[C_FC][off] * shrink, rtol=1e-6, atol=0)
    # plain GA+FT with the same settings moves weights outside the mask as well
    res = ga_ft.run(context(model_dir, sets), {**FAST, "weight_decay": 0.1})
    assert not torch.equal(res.tensors[C_FC][off], base[C_FC][off])


def test_salun_mask_errors_name_the_method_or_the_file(model_dir, sets, tmp_path):
    with pytest.raises(UnlearnflowError, match="salun"):
        salun.run(context(model_dir, sets), FAST)
    good = random_mask(model_dir, tmp_path / "good.safetensors")
    renamed = {f"model.{n}": m for n, m in good.items()}
    bad_names = tmp_path / "bad_names.safetensors"
    save_file(renamed, str(bad_names), metadata={"format": "unlearnflow.mask/1"})
    with pytest.raises(InputFileError, match="bad_names.safetensors.*do not match"):
        salun.run(context(model_dir, sets, mask=bad_names), FAST)
    floats = tmp_path / "floats.safetensors"
    save_file({n: m.float() for n, m in good.items()}, str(floats), metadata={"format": "unlearnflow.mask/1"})
    with pytest.raises(InputFileError, match="floats.safetensors.*torch.bool"):
        salun.run(context(model_dir, sets, mask=floats), FAST)
    grads = tmp_path / "grads.safetensors"
    save_file(good, str(grads), metadata={"format": "unlearnflow.gradients/1"})
    with pytest.raises(InputFileError, match="grads.safetensors.*not a SalUn mask"):
        salun.run(context(model_dir, sets, mask=grads), FAST)
    with pytest.raises(InputFileError, match="missing.safetensors"):
        salun.run(context(model_dir, sets, mask=tmp_path / "missing.safetensors"), FAST)


def test_a_mask_that_is_all_false_for_a_tensor_freezes_it(model_dir, sets, tmp_path):
    mask = {n: torch.ones_like(p, dtype=torch.bool) for n, p in base_params(model_dir).items()}
    mask[C_FC][:] = False
    bundle = load_clip(model_dir)
    theta0 = snapshot(bundle.model)
    out = finetune(bundle, sets["forget"], sets["retain"], forget_weight=1, retain_weight=1, epochs=1, lr=1e-3,
                   weight_decay=0.1, batch_size=16, max_steps=1, mask=mask)  # fmt: skip
    n_params = len(theta0)
    assert out["trainable_tensors"] == n_params - 2  # c_fc frozen, logit_scale frozen
    assert out["masked_tensors"] == 0  # every other mask is all True: nothing to restore
    changed = changed_tensors(bundle.model, theta0)
    assert C_FC not in changed and "logit_scale" not in changed and len(changed) > 5
    assert all(p.requires_grad for p in bundle.model.parameters())  # flags restored


# ------------------------------------------------------- FT, GA, GA+FT
def test_ga_raises_the_forget_loss_and_ft_lowers_the_retain_loss(model_dir, sets):
    base = base_params(model_dir)
    ctx = context(model_dir, sets)
    before = mean_loss(ctx.bundle, sets["forget"], "cosine")
    res = ga.run(ctx, {**FAST, "max_steps": 4})
    assert mean_loss(ctx.bundle, sets["forget"], "cosine") > before + 0.05
    assert_only_changed(res, base)
    assert list(res.trace.columns[:5]) == ["epoch", "steps", "forget_loss", "retain_loss", "lr"]
    assert res.trace["retain_loss"].isna().all()  # GA never looks at the retain set
    assert res.info["params"]["forget_weight"] == 1 and res.info["params"]["retain_weight"] == 0

    ctx = context(model_dir, sets)
    before = mean_loss(ctx.bundle, sets["retain"], "contrastive")
    res = ft.run(ctx, {"epochs": 2, "batch_size": 16, "lr": 1e-3})
    assert mean_loss(ctx.bundle, sets["retain"], "contrastive") < before
    assert_only_changed(res, base)
    assert res.trace["forget_loss"].isna().all()
    n_retain = count_samples(sets["retain"])
    assert res.info["steps"] == 2 * math.ceil(n_retain / 16)  # FT's epoch: one pass over the retain set


def test_ga_ft_changes_parameters_and_is_reproducible(model_dir, sets):
    base = base_params(model_dir)
    quick = {**FAST, "max_steps": 2, "passes": "joint"}  # two steps, each with both sets
    a = ga_ft.run(context(model_dir, sets, seed=3), quick)
    b = ga_ft.run(context(model_dir, sets, seed=3), quick)
    assert_only_changed(a, base)
    assert a.tensors.keys() == b.tensors.keys() and all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert a.info["steps"] == 2 and len(a.trace) == 1
    assert a.trace[["forget_loss", "retain_loss"]].notna().all().all()
    with pytest.raises(UnlearnflowError, match="ga_ft: unknown params \\['lrr'\\]"):
        ga_ft.run(context(model_dir, sets), {"lrr": 1})


def test_an_epoch_alternates_a_forget_pass_and_a_retain_pass(model_dir, sets):
    """The reference: each epoch a full ascent pass over F, then a full descent
    pass over R; ``joint`` pairs each forget batch with a retain batch."""
    n_forget, n_retain = count_samples(sets["forget"]), count_samples(sets["retain"])
    kw = dict(forget_weight=1, retain_weight=1, epochs=2, lr=1e-6, weight_decay=0.0, batch_size=32, schedule="constant")
    out = finetune(load_clip(model_dir), sets["forget"], sets["retain"], **kw)
    per_epoch = math.ceil(n_forget / 32) + math.ceil(n_retain / 32)
    assert [r["steps"] for r in out["trace"]] == [per_epoch, 2 * per_epoch]
    assert all(r["lr"] == 1e-6 for r in out["trace"])
    joint = finetune(load_clip(model_dir), sets["forget"], sets["retain"], passes="joint", **kw)
    per_epoch = math.ceil(n_forget / 32)
    assert [r["steps"] for r in joint["trace"]] == [per_epoch, 2 * per_epoch]
    with pytest.raises(UnlearnflowError, match="passes 'paired'"):
        finetune(None, None, None, **{**kw, "passes": "paired"})


@pytest.mark.parametrize("n_forget,n_retain,bs", [(20, 1000, 32), (33, 70, 16), (5, 3, 8)])
def test_alternate_plan_visits_every_forget_and_retain_sample_once_per_epoch(n_forget, n_retain, bs):
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):  # two epochs, each a fresh permutation of both sets
        plan = epoch_plan("alternate", n_forget, n_retain, bs, gen)
        f = [b for b, r in plan if b is not None]
        r = [b for f_, b in plan if b is not None]
        assert all((a is None) != (b is None) for a, b in plan)  # one set per step
        assert all(a is not None for a, _ in plan[: len(f)])  # the forget pass comes first
        assert sorted(torch.cat(f).tolist()) == list(range(n_forget))
        assert sorted(torch.cat(r).tolist()) == list(range(n_retain))
        assert len(f) == math.ceil(n_forget / bs) and len(r) == math.ceil(n_retain / bs)
    # joint: every forget sample once, each step with a full retain batch
    cyc = _Cycler(n_retain, bs, gen)
    plan = epoch_plan("joint", n_forget, n_retain, bs, gen, cyc)
    assert sorted(torch.cat([a for a, _ in plan]).tolist()) == list(range(n_forget))
    assert all(len(b) == min(bs, n_retain) for _, b in plan)
    # a last contrastive batch of one pair is dropped, never trained on
    plan = epoch_plan("alternate", 0, 2 * bs + 1, bs, gen, single_retain=True)
    assert [len(r) for _, r in plan] == [bs, bs]


def test_one_ga_step_moves_along_plus_the_forget_gradient(model_dir, sets):
    """loss = -L_forget, so one SGD step is theta + lr * grad L_forget."""
    bundle = load_clip(model_dir)
    theta0 = snapshot(bundle.model)
    batches = list(iter_batches(sets["forget"], bundle, 10_000))  # the whole set: one batch
    grads, _ = accumulate_gradients(bundle, batches, "cosine", progress=False)
    lr = 1e-2
    finetune(bundle, sets["forget"], None, forget_weight=1.0, retain_weight=0.0, epochs=1, lr=lr, weight_decay=0.0,
             batch_size=10_000, optimizer="sgd", schedule="constant")  # fmt: skip
    params = dict(bundle.model.named_parameters())
    for name in (C_FC, "transformer.resblocks.0.attn.out_proj.weight", "visual.proj", "ln_final.bias"):
        step = params[name].detach() - theta0[name]
        torch.testing.assert_close(step, lr * grads[name], rtol=1e-3, atol=1e-7)
        assert float((step * grads[name]).sum()) > 0
    assert torch.equal(params["logit_scale"], theta0["logit_scale"])


def test_schedules_and_bad_options():
    assert lr_at(0, lr=1.0, total=10, schedule="cosine", warmup_steps=0) == 1.0
    assert lr_at(5, lr=1.0, total=10, schedule="cosine", warmup_steps=0) == pytest.approx(0.5)
    assert lr_at(1, lr=1.0, total=10, schedule="cosine", warmup_steps=4) == pytest.approx(0.5)  # warmup
    assert lr_at(7, lr=1.0, total=10, schedule="constant", warmup_steps=2) == 1.0
    assert not decays("visual.ln_post.weight", torch.zeros(3)) and not decays("a.bias", torch.zeros(3, 3))
    for kw, msg in (({"optimizer": "lion"}, "optimizer 'lion'"), ({"schedule": "step"}, "schedule 'step'")):
        args = dict(forget_weight=1, retain_weight=0, epochs=1, lr=1.0, weight_decay=0.0, batch_size=2) | kw
        with pytest.raises(UnlearnflowError, match=msg):
            finetune(None, None, None, **args)
    with pytest.raises(UnlearnflowError, match="both 0"):
        finetune(None, None, None, forget_weight=0, retain_weight=0, epochs=1, lr=1.0, weight_decay=0, batch_size=2)


# ------------------------------------------------------------------- SSD
def test_ssd_dampening_formula():
    theta = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, -6.0])
    i_f = torch.tensor([1.0, 10.0, 0.0, 5.0, 2.0, 3.0])
    i_d = torch.tensor([1.0, 0.5, 0.0, 1.0, 0.1, 0.0])
    alpha = 2.0  # selected: I_f > 2 I_d -> elements 1, 3, 4, 5
    assert ssd.selected(i_f, i_d, alpha).tolist() == [False, True, False, True, True, True]
    out = ssd.dampen(theta, i_f, i_d, alpha, lam=0.5)
    expected = torch.tensor([1.0, 2.0 * 0.5 * 0.5 / 10, 3.0, 4.0 * 0.5 / 5, 5.0 * 0.5 * 0.1 / 2, 0.0])
    torch.testing.assert_close(out, expected)
    assert out[0] == theta[0] and out[2] == theta[2]  # untouched elements bit-identical
    # a large lambda dampens less: min(lambda I_d / I_f, 1) saturates at 1
    gentle = ssd.dampen(theta, i_f, i_d, alpha, lam=100.0)
    assert torch.equal(gentle[:5], theta[:5]) and gentle[5] == 0  # I_d = 0: always zeroed
    assert (ssd.dampen(theta, i_f, i_d, alpha, 1.0).abs() >= out.abs()).all()


def test_ssd_choice_rule():
    p = {"forget_metric": "fa1", "utility_budget": {"identity_acc1": 5.0}, "lambda_mode": "independent"}

    def row(lam, fa, ia, ok):
        return {"lam": lam, "fa1": fa, "identity_acc1": ia, "forgets": fa == 0, "within_budget": ok}

    def probes(*rows):
        return [{**r, "order": i} for i, r in enumerate(rows)]

    rows = probes(row(5.0, 50, 90, True), row(2.0, 0, 88, True), row(1.0, 0, 86, True), row(0.1, 0, 20, False))
    best = ssd.choose(rows, p)
    assert best["lam"] == 2.0 and best["status"] == "forgets within budget"  # gentlest that forgets
    rows = probes(row(5.0, 50, 90, True), row(1.0, 10, 80, True), row(0.5, 10, 85, False), row(0.1, 0, 20, False))
    assert ssd.choose(rows, p)["lam"] == 0.1 and ssd.choose(rows, p)["status"] == "forgets over budget"
    rows = probes(row(5.0, 50, 90, True), row(1.0, 10, 80, True), row(0.5, 10, 85, False))
    best = ssd.choose(rows, p)
    assert best["lam"] == 0.5 and best["status"] == "does not forget"
    # cumulative: epochs in the given order; the first that forgets within budget
    cum = {**p, "lambda_mode": "cumulative"}
    rows = probes(row(0.1, 50, 90, True), row(0.644, 0, 89, True), row(1.189, 0, 88, True))
    best = ssd.choose(rows, cum)
    assert best["order"] == 1 and best["lam"] == 0.644 and "first epoch" in best["why"]
    rows = probes(row(0.1, 10, 90, True), row(0.644, 10, 89, True))
    assert ssd.choose(rows, cum)["order"] == 0  # a tie on the forget metric and utility is broken toward the earlier


def test_ssd_importances_are_mean_squared_batch_gradients(model_dir, sets):
    bundle = load_clip(model_dir)
    batches = list(iter_batches(sets["forget"], bundle, 8))[:2]
    imp, stats = ssd.importances(bundle, batches, "cosine")
    assert stats["batches"] == 2 and "logit_scale" not in imp
    g = [accumulate_gradients(bundle, [b], "cosine", progress=False)[0][C_FC] for b in batches]
    torch.testing.assert_close(imp[C_FC], (g[0] ** 2 + g[1] ** 2) / 2, rtol=1e-4, atol=1e-12)


def test_ssd_searches_lambdas_on_validation_and_fixed_lambda_does_not(model_dir, sets, val_sets):
    base = base_params(model_dir)
    lams = [0.1, 1.0, 3.0]
    params = {"alpha": 1.0, "lambdas": lams, "batch_size": 16, "utility_budget": {"identity_acc1": 100.0},
              "lambda_mode": "independent"}  # fmt: skip
    res = ssd.run(context(model_dir, sets, val_sets=val_sets), params)
    t = res.trace
    assert len(t) == 3 and list(t["lam"]) == [3.0, 1.0, 0.1]  # gentle to strong
    assert {"fa1", "identity_acc1", "test_acc1", "forgets", "within_budget"} <= set(t.columns)
    assert res.info["lambda"] == ssd.choose(t.to_dict("records"), ssd.DEFAULTS | params)["lam"]
    assert res.info["why"] and res.info["status"] != "fixed lambda"
    assert_only_changed(res, base)
    for name, new in res.tensors.items():  # dampening only ever shrinks
        assert (new.abs() <= base[name].abs()).all()
    with pytest.raises(UnlearnflowError, match="ssd: .*no val_sets"):
        ssd.run(context(model_dir, sets), params)
    # a fixed lambda: no search, no evaluation (no validation sets needed)
    fixed = ssd.run(context(model_dir, sets), {**params, "lambdas": 1.0})
    assert len(fixed.trace) == 1 and "fa1" not in fixed.trace.columns
    assert fixed.info["status"] == "fixed lambda" and fixed.info["lambda"] == 1.0 and fixed.info["probes"] == 0
    assert_only_changed(fixed, base)
    if res.info["lambda"] == 1.0:  # the same edit, whether searched or fixed
        assert all(torch.equal(res.tensors[k], fixed.tensors[k]) for k in res.tensors)
    assert isinstance(res.trace, pd.DataFrame)


def test_ssd_cumulative_dampens_over_its_epochs(model_dir, sets, val_sets):
    """The reference loop: each lambda an epoch on the weights the last one left."""
    base = base_params(model_dir)
    lams = [0.5, 2.0, 1.0]  # kept in the given order
    params = {"alpha": 1.0, "lambdas": lams, "batch_size": 16, "utility_budget": {"identity_acc1": 100.0},
              "forget_target": 100.0}  # fmt: skip  (the first epoch already "forgets": it is chosen)
    res = ssd.run(context(model_dir, sets, val_sets=val_sets), params)
    t = res.trace
    assert list(t["lam"]) == lams and list(t["order"]) == [0, 1, 2]
    assert t["dampened_elements"].is_monotonic_increasing  # the product only ever shrinks more
    assert res.info["lambda_mode"] == "cumulative" and res.info["lambdas_applied"] == [0.5]
    # every epoch's model is theta(0) dampened by each lambda so far, in turn
    bundle = load_clip(model_dir)
    imp_f, _ = ssd.importances(bundle, iter_batches(sets["forget"], bundle, 16), "cosine")
    imp_d, _ = ssd.importances(bundle, iter_batches(sets["retain"], bundle, 16), "contrastive")
    for name, new in res.tensors.items():
        torch.testing.assert_close(new, ssd.dampen(base[name], imp_f[name], imp_d[name], 1.0, 0.5))
    # a suite that sees the target forgotten only at the third epoch: the model
    # left is theta(0) dampened by the three lambdas in turn
    class ThirdEpochForgets:
        calls = 0

        def evaluate(self, *a):
            self.calls += 1  # call 1: the base model, then one per epoch
            return {"fa1": 0.0 if self.calls == 4 else 100.0, "fa5": 100.0, "identity_acc1": 90.0, "test_acc1": 90.0}

    bundle = load_clip(model_dir)
    out = ssd.run_ssd(bundle, imp_f, imp_d, ssd.DEFAULTS | params | {"forget_target": 0.0}, ThirdEpochForgets())
    assert out["lambdas_applied"] == lams and out["status"] == "forgets within budget"
    model = dict(bundle.model.named_parameters())
    for name in res.tensors:
        want = base[name]
        for lam in lams:
            want = ssd.dampen(want, imp_f[name], imp_d[name], 1.0, lam)
        torch.testing.assert_close(model[name].detach(), want)
        assert not torch.equal(want, ssd.dampen(base[name], imp_f[name], imp_d[name], 1.0, 0.5))
    independent = ssd.run(context(model_dir, sets, val_sets=val_sets), {**params, "lambda_mode": "independent"})
    assert list(independent.trace["lam"]) == [2.0, 1.0, 0.5]  # gentle to strong, each from theta(0)


# ------------------------------------------------- through the generic stage
@pytest.mark.parametrize(
    "method, params",
    [
        ("salun", {**FAST, "max_steps": 2, "mask_fraction": 0.5}),
        ("ssd", {"lambdas": [1.0], "batch_size": 16}),
    ],
)
def test_the_unlearn_stage_writes_delta_trace_and_info(
    model_dir, sets, val_sets, tmp_path, monkeypatch, method, params
):
    """The modules plug into unlearn_clip (registered here for the test only)."""
    import json

    from safetensors.torch import load_file

    from unlearnflow.methods import METHODS
    from unlearnflow.stages.unlearn import unlearn_clip

    monkeypatch.setitem(METHODS["clip"], method, f"unlearnflow.methods.{method}")
    mask = tmp_path / "mask.safetensors"
    random_mask(model_dir, mask)
    inp = {
        "config": model_dir / "open_clip_config.json",
        "forget": sets["forget"],
        "retain": sets["retain"],
        "mask": mask if method == "salun" else None,
        **{f"{s}_{kind}": v[key] for s, v in val_sets.items() for kind, key in (("val", "tar"), ("classes", "classes"))},
    }
    out = {
        k: tmp_path / method / n
        for k, n in (("delta", "delta.safetensors"), ("trace", "t.parquet"), ("info", "i.json"))
    }
    unlearn_clip(inp, out, {"method": method, "target": TARGET, "params": params, "device": "cpu", "seed": 0})
    info = json.loads(out["info"].read_text())
    delta = load_file(out["delta"])
    assert sorted(delta) == info["changed_tensors"] and "logit_scale" not in delta
    assert len(pd.read_parquet(out["trace"])) >= 1
    base = base_params(model_dir)
    assert all(not torch.equal(t, base[n]) for n, t in delta.items())
