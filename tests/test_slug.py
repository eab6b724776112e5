"""SLUG on CLIP: gradients, the update's sign, cached probes, the search, the delta,
and the real path (an open_clip model from a local checkpoint)."""

import json

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file


from unlearnflow.gradients import (
    accumulate_gradients,
    check_nonzero,
    compute_set_gradients,
    iter_batches,
    load_gradients,
    set_loss,
)
from unlearnflow.io import UnlearnflowError
from unlearnflow.methods import get_method
from unlearnflow.methods.slug import (
    CachedVisionEncoder,
    ProbeEvaluator,
    SearchState,
    choose,
    edited,
    run_slug,
    search_layer,
    stop_rules,
)
from unlearnflow.metrics.clip_eval import EvalSuite, eval_sets_from
from unlearnflow.models.clip import export_open_clip, load_clip, save_clip, tiny_config
from unlearnflow.stages.gradients import layer_analysis
from unlearnflow.stages.unlearn import unlearn_clip

from conftest import write_small_eval_sets

SMALL = tiny_config(
    {
        "embed_dim": 32,
        "vision_cfg": {"width": 32, "layers": 2, "head_width": 16, "patch_size": 8},
        "text_cfg": {"width": 32, "heads": 2, "layers": 2},
    }
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("model")
    save_clip(open_clip.CLIP(**SMALL), SMALL, d, {"source": "test"})
    return d


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory):
    return write_small_eval_sets(tmp_path_factory.mktemp("eval"), val=3, test=3, sets=("identities", "objects", "styles"))


TARGET = {"id": "mira", "name": "Mira Castell", "kind": "identity"}
STYLE = {"id": "inkwash", "name": "Inkwash", "kind": "style"}


def test_forget_loss_is_mean_one_minus_cosine():
    img = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    txt = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert float(set_loss("cosine", img, txt, torch.tensor(0.0))) == pytest.approx(0.5)
    # InfoNCE of perfectly separated pairs at a high temperature is ~0
    assert float(set_loss("contrastive", torch.eye(3), torch.eye(3), torch.tensor(np.log(100.0)))) < 1e-10
    with pytest.raises(UnlearnflowError, match="unknown loss"):
        set_loss("hinge", img, txt, torch.tensor(0.0))


def test_gradients_are_the_mean_of_per_batch_gradients(model_dir, small_shards):
    bundle = load_clip(model_dir)
    batches = list(iter_batches(small_shards[0], bundle, batch_size=48))[:3]
    batches[2] = (batches[2][0][:7], batches[2][1][:7])  # a smaller last batch
    grads, stats = accumulate_gradients(bundle, batches, "cosine", progress=False)
    assert stats["batches"] == 3 and stats["samples"] == 48 + 48 + 7
    from unlearnflow.models.clip import normalise

    model = bundle.model
    name = "visual.transformer.resblocks.1.mlp.c_fc.weight"
    manual = torch.zeros_like(dict(model.named_parameters())[name])
    for x, t in batches:
        model.zero_grad()
        loss = set_loss("cosine", model.encode_image(normalise(x)), model.encode_text(t), model.logit_scale)
        loss.backward()
        manual += dict(model.named_parameters())[name].grad / 3
    model.zero_grad()
    torch.testing.assert_close(grads[name], manual, rtol=1e-4, atol=1e-7)
    # the model is not updated and keeps no gradients
    assert all(p.grad is None for p in model.parameters())
    # a gradient restricted to some names only keeps those
    some, _ = accumulate_gradients(bundle, batches[:1], "cosine", names={name}, progress=False)
    assert list(some) == [name]


def test_gradient_file_metadata_and_errors(model_dir, small_shards, tmp_path):
    out = tmp_path / "forget.safetensors"
    meta = compute_set_gradients(model_dir, small_shards[0], out, which="forget", loss="cosine", batch_size=128)
    grads, stored = load_gradients(out)
    assert stored["set"] == "forget" and stored["loss"] == "cosine"
    assert stored["sign"].startswith("+grad")
    assert int(stored["samples"]) == meta["samples"] > 300
    assert stored["model_fingerprint"] == json.loads((model_dir / "model.json").read_text())["fingerprint"]
    bundle = load_clip(model_dir)
    assert set(grads) == {n for n, _ in bundle.model.named_parameters()}
    assert all(g.dtype == torch.float32 for g in grads.values())
    # an empty set is an error naming the file, and writes nothing
    from unlearnflow.data.shards import write_shard

    empty = tmp_path / "empty.tar"
    write_shard(empty, [])
    with pytest.raises(UnlearnflowError, match="empty.tar.*empty set"):
        compute_set_gradients(model_dir, empty, tmp_path / "e.safetensors", which="forget", loss="cosine", batch_size=8)
    assert not (tmp_path / "e.safetensors").exists()
    with pytest.raises(UnlearnflowError, match="all zero"):
        check_nonzero({"a": torch.zeros(3)}, "somewhere")


def test_slug_update_ascends_the_forget_loss(model_dir, small_shards):
    """theta + lambda * g raises the forget loss; theta - lambda * g lowers it."""
    bundle = load_clip(model_dir)
    batches = list(iter_batches(small_shards[0], bundle, batch_size=200))[:1]
    grads, stats = accumulate_gradients(bundle, batches, "cosine", progress=False)
    name = "transformer.resblocks.0.mlp.c_proj.weight"
    param = dict(bundle.model.named_parameters())[name]
    theta0 = param.detach().clone()
    lam = 1e-2 * float(theta0.norm() / grads[name].norm())

    def loss_with(t):
        with torch.no_grad():
            param.copy_(t)
        _, s = accumulate_gradients(bundle, batches, "cosine", progress=False)
        with torch.no_grad():
            param.copy_(theta0)
        return s["mean_loss"]

    base = stats["mean_loss"]
    assert loss_with(edited(theta0, grads[name], lam)) > base > loss_with(edited(theta0, grads[name], -lam))


@pytest.mark.parametrize(
    "name",
    [
        "visual.transformer.resblocks.1.attn.in_proj_weight",
        "visual.transformer.resblocks.0.mlp.c_fc.weight",
        "visual.proj",
        "visual.ln_post.weight",
        "visual.conv1.weight",
    ],
)
def test_cached_vision_features_equal_full_forward(model_dir, eval_dir, name):
    bundle = load_clip(model_dir)
    suite = EvalSuite.load(eval_sets_from(eval_dir, "val"), TARGET, bundle.preprocess)
    enc = CachedVisionEncoder(bundle.model, suite.identities.images, name)
    param = dict(bundle.model.named_parameters())[name]
    with torch.no_grad():
        param.add_(0.05 * torch.randn_like(param))  # an edit after caching
        full = torch.nn.functional.normalize(bundle.model.encode_image(suite.identities.images), dim=-1)
    torch.testing.assert_close(enc(), full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("target", [TARGET, STYLE], ids=["identity", "style"])
@pytest.mark.parametrize(
    "name", ["visual.transformer.resblocks.1.mlp.c_proj.weight", "transformer.resblocks.1.attn.out_proj.weight"]
)
def test_probe_results_equal_uncached_evaluation(model_dir, eval_dir, name, target):
    bundle = load_clip(model_dir)
    suite = EvalSuite.load(eval_sets_from(eval_dir, "val"), target, bundle.preprocess)
    probe = ProbeEvaluator(bundle, suite, name)
    param = dict(bundle.model.named_parameters())[name]
    theta0 = param.detach().clone()
    new = theta0 + 0.5 * torch.randn_like(theta0) * theta0.std()
    cached = probe(new)
    assert torch.equal(param, theta0)  # the probe restores theta(0)
    with torch.no_grad():
        param.copy_(new)
    uncached = suite.evaluate(bundle.model, bundle.tokenizer)
    with torch.no_grad():
        param.copy_(theta0)
    keys = ["fa1", "fa5", "identity_acc1", "identity_acc5", "test_acc1", "test_acc5"]
    keys += ["style_acc1", "style_acc5"] if target["kind"] == "style" else []
    assert set(keys) <= set(cached)
    for k in keys:
        assert cached[k] == pytest.approx(uncached[k]), k


def test_style_target_scores_by_hand(model_dir, eval_dir):
    """A style target: forget accuracy over the style names on its own images,
    style_acc1 on the other styles' images, and identity / object accuracy
    over every class (no target among them)."""
    from unlearnflow.metrics.zeroshot import STYLE_TEMPLATES, encode_images, text_classifier

    bundle = load_clip(model_dir)
    suite = EvalSuite.load(eval_sets_from(eval_dir, "test"), STYLE, bundle.preprocess)
    assert suite.style_names == ["Vellum", "Neonwave", "Inkwash"]
    rec = suite.evaluate(bundle.model, bundle.tokenizer)
    feats = encode_images(bundle.model, suite.styles.images)
    clf = text_classifier(bundle.model, bundle.tokenizer, suite.style_names, STYLE_TEMPLATES)
    pred, labels = (feats @ clf).argmax(1), suite.styles.labels
    own = labels == 2
    assert rec["fa1"] == pytest.approx(100 * float((pred[own] == 2).float().mean()))
    assert rec["style_acc1"] == pytest.approx(100 * float((pred[~own] == labels[~own]).float().mean()))
    assert rec["fa5"] == 100.0  # top-5 of 3 names
    assert rec["n_forget_images"] == int(own.sum()) > 0
    # identities and objects: every class counts, none is the target
    clfs = suite.classifiers(bundle.model, bundle.tokenizer)
    for images, key in ((suite.objects, "objects"), (suite.identities, "identities")):
        pred = (encode_images(bundle.model, images.images) @ clfs[key]).argmax(1)
        hits = [float((pred[images.labels == c] == c).float().mean()) for c in images.labels.unique()]
        if key == "objects":  # plain mean over images
            assert rec["test_acc1"] == pytest.approx(100 * float((pred == images.labels).float().mean()))
        else:  # mean over identities, all of them
            assert rec["identity_acc1"] == pytest.approx(100 * sum(hits) / len(hits))
    ident = EvalSuite.load(eval_sets_from(eval_dir, "test"), TARGET, bundle.preprocess)
    assert ident.styles is None and "style_acc1" not in ident.evaluate(bundle.model, bundle.tokenizer)


def test_style_target_needs_the_styles_set(model_dir, eval_dir):
    bundle = load_clip(model_dir)
    sets = {k: v for k, v in eval_sets_from(eval_dir, "val").items() if k != "styles"}
    with pytest.raises(UnlearnflowError, match=r"'Inkwash' is a style.*data.eval.styles"):
        EvalSuite.load(sets, STYLE, bundle.preprocess)
    with pytest.raises(UnlearnflowError, match="not one of the 3 class names"):
        EvalSuite.load(eval_sets_from(eval_dir, "val"), {"name": "Pointillism", "kind": "style"}, bundle.preprocess)


def _fake_front(fa5_until_budget: bool):
    """Two layers whose forget accuracy falls with lambda; FA@5 reaches 0 only
    past the utility budget unless ``fa5_until_budget``."""

    def probe_of(layer):
        theta0 = torch.zeros(100)
        theta0[1] = 100.0

        def evaluate(tensor):
            lam = float(tensor.flatten()[0])
            return {
                "fa1": 0.0 if lam >= 2.0 else 60.0,
                "fa5": 0.0 if lam >= (3.0 if fa5_until_budget else 6.0) else 100.0,
                "identity_acc1": 90.0 if lam <= 4.0 else 40.0,
                "test_acc1": 90.0,
            }

        return evaluate, theta0

    grads = {"a": torch.ones(100), "b": torch.ones(100)}
    base = {"fa1": 100.0, "fa5": 100.0, "identity_acc1": 90.0, "test_acc1": 90.0}
    return probe_of, grads, base


@pytest.mark.parametrize("fa5_reachable", [True, False])
def test_auto_stop_rule_is_fa5_then_fa1(fa5_reachable):
    """auto: the reference's FA@5 rule; only where no layer meets it within
    budget does the search run again on FA@1, and the choice says so."""
    from unlearnflow.methods.slug import DEFAULTS, search_front

    probe_of, grads, base = _fake_front(fa5_reachable)
    p = {**DEFAULTS, "utility_budget": {"identity_acc1": 5.0}, "forget_metric": "auto"}
    out = search_front(["a", "b"], probe_of, grads, base, p)
    used = "fa5" if fa5_reachable else "fa1"
    assert out["p_used"]["forget_metric"] == used
    assert out["choice"]["status"] == "forgets within budget"
    assert set(pd.DataFrame(out["rows"])["forget_metric"]) == ({"fa5"} if fa5_reachable else {"fa5", "fa1"})
    assert len(out["outcomes"]) == (2 if fa5_reachable else 4)
    assert ("no layer met fa5 within budget" in out["choice"]["why"]) != fa5_reachable
    lam = out["choice"]["lam"]
    assert (3.0 <= lam <= 4.0) if fa5_reachable else (2.0 <= lam <= 2.2)
    # an explicit rule is the only one tried, whether it is met or not
    out = search_front(["a", "b"], probe_of, grads, base, {**p, "forget_metric": "fa5"})
    assert out["p_used"]["forget_metric"] == "fa5" and {o["forget_metric"] for o in out["outcomes"]} == {"fa5"}
    assert out["choice"]["status"] == ("forgets within budget" if fa5_reachable else "forgets over budget")
    assert stop_rules("auto") == ("fa5", "fa1") and stop_rules("fa1") == ("fa1",)
    with pytest.raises(UnlearnflowError, match="'fa3' is not one of auto, fa1, fa5"):
        stop_rules("fa3")


def test_run_slug_records_the_rule_that_decided(model_dir, eval_dir):
    bundle = load_clip(model_dir)
    suite = EvalSuite.load(eval_sets_from(eval_dir, "val"), TARGET, bundle.preprocess)
    name = "transformer.resblocks.1.attn.out_proj.weight"
    theta = dict(bundle.model.named_parameters())[name]
    grads = {name: torch.randn_like(theta)}
    table = pd.DataFrame({"name": [name], "tower": ["text"], "pareto": [True], "front_rank": [0]})
    out = run_slug(bundle, suite, grads, table, {"forget_metric": "auto", "max_probes": 3})
    assert out["params"]["forget_metric_asked"] == "auto" and out["params"]["forget_metric"] in ("fa5", "fa1")
    used = out["params"]["forget_metric"]
    rows = out["trace"][out["trace"]["forget_metric"] == used]
    assert len(rows) > 0 and (rows["forgets"] == (rows[used] <= 0.0)).all()


def _fake_search(forget_from, budget_until, max_probes=10, tol=0.05):
    """A layer that forgets for lam >= forget_from and keeps utility for lam <= budget_until."""
    seen = []

    def evaluate(tensor):
        lam = float(tensor.flatten()[0])
        seen.append(lam)
        return {
            "fa1": 0.0 if lam >= forget_from else 50.0,
            "fa5": 0.0,
            "identity_acc1": 90.0 if lam <= budget_until else 50.0,
            "test_acc1": 90.0,
        }

    p = {
        "init_fraction": 0.1,
        "max_probes": max_probes,
        "forget_metric": "fa1",
        "forget_target": 0.0,
        "utility_budget": {"identity_acc1": 5.0},
        "bracket_tol": tol,
    }
    base = {"fa1": 100.0, "identity_acc1": 90.0, "test_acc1": 90.0}
    # theta0[0] = 0 and grad = 1 make element 0 equal lambda; ||theta|| = 100, ||g|| = 10: lam0 = 1
    theta0, grad = torch.zeros(100), torch.ones(100)
    theta0[1] = 100.0
    rows, outcome = search_layer(evaluate, theta0, grad, base, p, "layer")
    return seen, rows, outcome


def test_search_grows_then_bisects_to_the_smallest_forgetting_step():
    seen, rows, outcome = _fake_search(forget_from=3.7, budget_until=100)
    assert seen[:3] == [1.0, 2.0, 4.0]  # doubling until the target is forgotten
    assert seen[3] == 3.0  # then bisection between the last failure and success
    assert outcome["status"] == "forgets within budget"
    assert 3.7 <= outcome["lam"] <= 3.7 * 1.06  # within the bracket tolerance
    assert len(rows) <= 10
    lo = max(r["lam"] for r in rows if not r["forgets"])
    hi = min(r["lam"] for r in rows if r["forgets"])
    assert lo < 3.7 <= hi and (hi - lo) <= 0.05 * hi


def test_search_respects_the_probe_limit_and_the_budget():
    seen, rows, outcome = _fake_search(forget_from=1000.0, budget_until=100, max_probes=4)
    assert seen == [1.0, 2.0, 4.0, 8.0] and outcome["status"] == "does not forget"
    _, rows, outcome = _fake_search(forget_from=3.0, budget_until=2.0)
    assert outcome["status"] == "forgets over budget"
    assert not any(r["forgets"] and r["within_budget"] for r in rows)


def test_bracket_state_machine():
    s = SearchState(lam=1.0)
    s.next(False)
    assert (s.lo, s.hi, s.lam) == (1.0, None, 2.0)
    s.next(True)
    assert (s.lo, s.hi, s.lam) == (1.0, 2.0, 1.5)
    s.next(True)
    assert (s.lo, s.hi, s.lam) == (1.0, 1.5, 1.25)
    s.next(False)
    assert (s.lo, s.hi, s.lam) == (1.25, 1.5, 1.375)


def test_layer_choice_prefers_within_budget_then_utility():
    p = {"forget_metric": "fa1"}
    m = lambda fa, ia, ta: {"fa1": fa, "identity_acc1": ia, "test_acc1": ta}  # noqa: E731
    outcomes = [
        {"layer": "a", "status": "forgets over budget", "lam": 1, "metrics": m(0, 99, 99)},
        {"layer": "b", "status": "forgets within budget", "lam": 1, "metrics": m(0, 80, 80)},
        {"layer": "c", "status": "forgets within budget", "lam": 1, "metrics": m(0, 85, 85)},
        {"layer": "d", "status": "zero gradient"},
    ]
    best = choose(outcomes, p)
    assert best["layer"] == "c" and "b" in best["why"]


def test_real_path_export_gradients_layers_and_slug(tmp_path, small_shards, eval_dir):
    """An open_clip model from a local checkpoint runs through the same stages
    as a pretrained tag: export, gradients, layer analysis, SLUG, delta reload."""
    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    (cfg_dir / "unlearnflow-test-tiny.json").write_text(json.dumps(SMALL))
    open_clip.add_model_config(cfg_dir)
    torch.manual_seed(1)
    ckpt = tmp_path / "epoch_1.pt"
    torch.save(open_clip.CLIP(**SMALL).state_dict(), ckpt)
    model = tmp_path / "model"
    info = export_open_clip("unlearnflow-test-tiny", str(ckpt), model)
    assert info["source"] == "open_clip" and info["pretrained"] == str(ckpt)
    reloaded = load_clip(model)
    for name, t in torch.load(ckpt, weights_only=True).items():
        assert torch.equal(reloaded.model.state_dict()[name], t), name

    # forget/retain sets: a caption split of one small shard is enough here
    from unlearnflow.data.select import select_sets

    sets = tmp_path / "sets"
    select_sets(small_shards, {"name": "Mira Castell"}, 120, 0, sets / "forget.tar", sets / "retain.tar", sets / "s.json")
    grads = {}
    for which, loss in (("forget", "cosine"), ("retain", "contrastive")):
        grads[which] = tmp_path / f"{which}.safetensors"
        compute_set_gradients(model, sets / f"{which}.tar", grads[which], which=which, loss=loss, batch_size=64)
    layers = {"table": tmp_path / "layers.parquet", "plot": tmp_path / "layers.png"}
    layer_analysis(
        {"grad_forget": grads["forget"], "grad_retain": grads["retain"], "weights": model / "open_clip_model.safetensors"},
        layers,
        {"use_abs_alignment": False, "include_layernorm": True},
    )
    table = pd.read_parquet(layers["table"])
    assert table["pareto"].any() and layers["plot"].stat().st_size > 1000

    out = {k: tmp_path / "slug" / n for k, n in (("delta", "delta.safetensors"), ("trace", "search.parquet"), ("info", "info.json"))}
    inp = {"config": model / "open_clip_config.json", "grad_forget": grads["forget"], "layers": layers["table"], **eval_dir}
    params = {"method": "slug", "target": TARGET, "params": {"max_layers_per_tower": 1, "max_probes": 3}, "device": "cpu"}
    unlearn_clip(inp, out, params)
    delta = load_file(out["delta"])
    assert len(delta) == 1  # SLUG changes exactly one tensor
    info = json.loads(out["info"].read_text())
    (layer,) = delta
    assert info["layer"] == layer and info["why"]
    trace = pd.read_parquet(out["trace"])
    assert set(trace["layer"]) == set(info["layers_searched"])
    assert len(trace) <= 3 * len(info["layers_searched"]) * trace["forget_metric"].nunique()  # auto: up to 2 rules
    # base + delta reproduces the edit bit for bit
    fg, _ = load_gradients(grads["forget"])
    theta0 = load_file(model / "open_clip_model.safetensors")[layer]
    expected = edited(theta0, fg[layer], info["lambda"])
    assert torch.equal(delta[layer], expected)
    # scripts/slug_oracle.py: every candidate x step, each row what the edited
    # model scores (checked on one row by editing the model for real)
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("slug_oracle", Path(__file__).parents[1] / "scripts/slug_oracle.py")
    oracle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(oracle)
    paths = {"model": model, "sets": eval_sets_from(eval_dir, "val"), "grads": grads["forget"], "layers": layers["table"]}
    sweep = oracle.sweep(paths, TARGET, [0.0, 0.3])
    assert len(sweep) == 2 * int(table["candidate"].sum())
    assert (sweep[sweep["ratio"] == 0.0][["d_identity_acc1", "d_test_acc1"]] == 0).all().all()
    row = sweep[sweep["ratio"] == 0.3].iloc[0]
    bundle = load_clip(model)
    theta = dict(bundle.model.named_parameters())[row["layer"]]
    with torch.no_grad():
        theta.copy_(edited(theta.detach().clone(), fg[row["layer"]], 0.3 * float(theta.norm()) / float(fg[row["layer"]].norm())))
    m = EvalSuite.load(paths["sets"], TARGET, bundle.preprocess).evaluate(bundle.model, bundle.tokenizer)
    assert (row["fa1"], row["fa5"]) == (pytest.approx(m["fa1"]), pytest.approx(m["fa5"]))
    assert row["d_test_acc1"] == pytest.approx(sweep.attrs["base"]["test_acc1"] - m["test_acc1"])
    assert len(oracle.best(sweep, 100.0, 100.0)) > 0
    edited_model = load_clip(model, delta=out["delta"]).model.state_dict()
    base_model = load_clip(model).model.state_dict()
    for name in base_model:
        assert torch.equal(edited_model[name], expected if name == layer else base_model[name]), name


def test_unknown_method_names_the_known_ones():
    with pytest.raises(UnlearnflowError, match="known methods: .*'ga_ft'.*'salun'.*'slug'.*'ssd'"):
        get_method("salun2")
