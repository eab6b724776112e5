"""SLUG for text-to-image diffusion: one text-encoder layer, one step.

The forget gradient and the layer table come from the CLIP whose text tower
*is* the pipeline's text encoder (checked by fingerprint). Candidate layers
are the text tower's Pareto-front layers that the pipeline's text encoder
uses (not ``text_projection``: Stable Diffusion conditions on token states).
The step size is searched like SLUG's (grow x2 until the target is
forgotten, then bisect), with one of three criteria:

- ``judge`` (default): generate a few images from forget and retain
  prompts with search seeds (disjoint from the evaluation seeds) and classify
  them with the pipeline's judge (``t2i.judge``, the table's), as the
  reference's UnlearnCanvas script judges its probes with UnlearnCanvas'
  classifier: forgets when UA >= ``ua_target``; within budget when IRA
  drops by at most ``ira_budget`` points and the retain CLIP score keeps
  ``clip_score_ratio`` of the base model's;
- ``generate``: the same search, the pictures classified zero-shot by the
  CLIP (the criterion before the judge);
- ``clip``: SLUG's own search on the CLIP's validation split, restricted to
  text layers (identity and object targets).

The ``generate`` search probes cheaply (``probe_seeds`` of the search seeds,
``probe_steps`` sampling steps) and then validates the chosen step with the
whole search set (every search seed, ``search_steps``): if it does not
forget there, or forgets over budget, up to ``max_refine`` more probes at
the whole set continue the same grow/bisect search from the cheap search's
bracket. ``probe_seeds: null`` and ``probe_steps: null`` probe with the
whole set (the search as it was, no validation needed). Probes are drawn
with ``search_sampler``: the evaluation's sampler by default (the reference
probes with its evaluation's pipeline), or ``ddim`` / ``ddpm`` by name.

The delta is the one edited tensor, in open_clip's name; loading maps it onto
the text encoder (three tensors when open_clip fuses q, k, v).
"""

from __future__ import annotations

import logging
import math
import time

import pandas as pd
import torch

from .. import method_table
from ..io import UnlearnflowError
from ..models.diffusion import SAMPLERS
from ..training import step_size_search
from . import MethodResult
from .slug import SearchState, edited, front_layers

log = logging.getLogger(__name__)

DEFAULTS = method_table.defaults("t2i", "slug")  # the one source: unlearnflow.method_table


LAYER_CHOICES = ("deepest", "rank")
CRITERIA = ("generate", "judge", "clip")


def text_front_layers(table: pd.DataFrame, num_layers: int, max_layers: int, choice: str = "rank") -> list[str]:
    """The text front layers to search, in order: ``rank`` by front rank (the
    layer table's importance order), or ``deepest`` first by block index, as
    the reference (``clip/a6_uncanvas.py`` edits the deepest text-encoder
    layer of the front, layer norms left out)."""
    from ..models.diffusion import maps_to_text_encoder

    if choice not in LAYER_CHOICES:
        raise UnlearnflowError(f"methods.slug (t2i): layer_choice {choice!r} is not one of {', '.join(LAYER_CHOICES)}")
    usable = table[(table["tower"] == "text") & table["name"].map(lambda n: maps_to_text_encoder(n, num_layers))]
    if usable.empty:
        raise UnlearnflowError("SLUG (t2i): no text-tower layer of the table maps onto the pipeline's text encoder")
    if choice == "deepest":
        front = usable[usable["pareto"]]
        block = front["name"].str.extract(r"^transformer\.resblocks\.(\d+)\.", expand=False)
        keep = block.notna() & ~front["name"].str.contains(r"\.ln_")
        if keep.any():
            ordered = front[keep].assign(block=block[keep].astype(int)).sort_values(["block", "front_rank"], ascending=[False, True])
            return list(ordered["name"][: int(max_layers)])
        log.warning("SLUG (t2i): no block layer on the text front; layers taken by front rank")
    return front_layers(usable, max_layers)


class GeneratedProbe:
    """Metrics of the pipeline with one text-encoder tensor replaced."""

    def __init__(self, ctx, clip_bundle, net, p: dict):
        from ..generate import prompt_sets
        from ..io import read_json

        self.ctx, self.net, self.p = ctx, net, p
        sets = prompt_sets(ctx.target, ctx.concepts, seeds=list(p["search_seeds"]))
        retain = sets["retain"]
        keep = retain["prompt"].drop_duplicates().iloc[:: max(1, math.ceil(retain["prompt"].nunique() / p["max_retain_prompts"]))]
        self.forget = sets["forget"]
        self.retain = retain[retain["prompt"].isin(set(keep))].reset_index(drop=True)
        self.classes = {d: read_json(ctx.val_sets[s]["classes"])["classes"] for d, s in
                        (("identity", "identities"), ("object", "objects"), ("style", "styles")) if s in ctx.val_sets}
        self.params = dict(ctx.bundle.text_encoder.named_parameters())
        from ..metrics.judge import clip_judge, load_judge

        if p["criterion"] == "judge":
            if ctx.judge is None:
                raise UnlearnflowError("methods.slug (t2i): criterion judge needs the judge's judge.json, and this job has none")
            self.judge = load_judge(ctx.judge, device=ctx.bundle.device, clip_bundle=clip_bundle)
        else:  # generate: the CLIP zero-shot over the validation sets' classes
            self.judge = clip_judge(clip_bundle, self.classes)

        seeds = list(p["search_seeds"])
        n = len(seeds) if p.get("probe_seeds") is None else max(1, min(int(p["probe_seeds"]), len(seeds)))
        self.steps = {"full": int(p["search_steps"]), "probe": int(p.get("probe_steps") or p["search_steps"])}
        # null: the evaluation's sampler, as far as the caller's context names
        # one (the pipeline's plan fills it in, so the job's params state it)
        self.sampler = p["search_sampler"] or ctx.sampling.get("sampler", SAMPLERS[0])
        if self.sampler not in SAMPLERS:
            raise UnlearnflowError(f"methods.slug (t2i): search_sampler {self.sampler!r} is not one of {list(SAMPLERS)}")
        self.seeds = {"full": seeds, "probe": seeds[:n]}
        # the cheap probe is the whole set itself: no validation needed then
        self.cheap = self.seeds["probe"] != seeds or self.steps["probe"] != self.steps["full"]

    def __call__(self, name: str | None = None, tensor: torch.Tensor | None = None, full: bool = True) -> dict:
        from ..metrics import images as im
        from ..metrics.judge import correctness
        from ..metrics.t2i_eval import _pct
        from ..models.diffusion import generate, hf_prefix, open_clip_to_hf

        b, domain = self.ctx.bundle, self.ctx.target["kind"]
        which = "full" if full else "probe"
        keep = set(self.seeds[which])
        forget = self.forget[self.forget["seed"].isin(keep)]
        retain = self.retain[self.retain["seed"].isin(keep)]
        saved = {}
        if name is not None:
            for hf, t in open_clip_to_hf({name: tensor}, b.text_layers, hf_prefix(b.text_encoder)).items():
                saved[hf] = self.params[hf].detach().clone()
                with torch.no_grad():
                    self.params[hf].copy_(t)
        try:
            s = {"steps": self.steps[which], "guidance": self.ctx.sampling["guidance"], "sampler": self.sampler}
            f_img = generate(b, list(forget["prompt"]), list(forget["seed"]), **s)
            r_img = generate(b, list(retain["prompt"]), list(retain["seed"]), **s)
        finally:
            with torch.no_grad():
                for hf, t in saved.items():
                    self.params[hf].copy_(t)
        import json

        f_acc = correctness(self.judge, f_img, [json.loads(v) for v in forget["labels"]])
        r_acc = correctness(self.judge, r_img, [json.loads(v) for v in retain["labels"]])
        return {
            "ua": 100.0 - _pct(f_acc[domain]),
            "ira": _pct(r_acc[domain]) if domain in r_acc else float("nan"),
            "clip_score": im.clip_score(self.net, r_img, list(retain["prompt"])),
        }


def _ok(base: dict, m: dict, p: dict) -> bool:
    ira_ok = not (base["ira"] == base["ira"]) or base["ira"] - m["ira"] <= p["ira_budget"]
    return ira_ok and m["clip_score"] >= p["clip_score_ratio"] * base["clip_score"]


def probe_loop(probe, layer, theta0, grad, base: dict, p: dict, state, max_probes: int, full: bool):
    """Probe lambdas from ``state`` (grow x2 until it forgets, then bisect);
    the trace rows and the smallest lambda that forgets within budget."""
    phase = "validate" if full and probe.cheap else "probe"
    gnorm, tnorm = float(grad.float().norm()), float(theta0.float().norm())

    def measure(lam: float):
        m = probe(layer, edited(theta0, grad, lam), full=full)
        return m, m["ua"] >= p["ua_target"], _ok(base, m, p)

    return step_size_search(state, measure, max_probes=max_probes, tol=p["bracket_tol"], gnorm=gnorm, tnorm=tnorm,
                            head={"layer": layer, "phase": phase})  # fmt: skip


def outcome_of(layer: str, rows: list[dict], state) -> dict:
    """A layer's outcome from its trace: within budget, over budget, or not."""
    if state.best is not None:
        return {"layer": layer, "status": "forgets within budget", "lam": state.best[0], "metrics": state.best[1]}
    forgetting = [r for r in rows if r["forgets"]]
    r = max(forgetting, key=lambda r: r["clip_score"]) if forgetting else max(rows, key=lambda r: r["ua"])
    status = "forgets over budget" if forgetting else "does not forget"
    return {"layer": layer, "status": status, "lam": r["lam"], "metrics": {k: r[k] for k in ("ua", "ira", "clip_score")}}


def search_generated(probe: GeneratedProbe, layer: str, theta0, grad, base: dict, p: dict):
    gnorm, tnorm = float(grad.float().norm()), float(theta0.float().norm())
    if gnorm == 0 or not math.isfinite(gnorm):
        return [], {"layer": layer, "status": "zero gradient"}
    state = SearchState(lam=p["init_fraction"] * tnorm / gnorm)
    rows = probe_loop(probe, layer, theta0, grad, base, p, state, p["max_probes"], not probe.cheap)
    return rows, outcome_of(layer, rows, state)


def validate(probe: GeneratedProbe, outcome: dict, probe_rows: list[dict], theta0, grad, base_full: dict, p: dict):
    """The cheap search's choice on the whole search set; where it does not
    forget within budget there, the grow/bisect search goes on at the whole
    set from the cheap search's bracket (its largest non-forgetting lambda on
    the layer, from ``probe_rows``; ``max_refine`` probes). Returns the trace
    rows and the outcome at the whole set (what the info reports)."""
    layer, lam = outcome["layer"], outcome["lam"]
    lo = max([r["lam"] for r in probe_rows if r["layer"] == layer and not r["forgets"]], default=0.0)
    state = SearchState(lam=lam)
    rows = probe_loop(probe, layer, theta0, grad, base_full, p, state, 1, True)
    if state.best is None and p["max_refine"] > 0:
        first = rows[0]
        # not forgetting: grow from the validated lambda; forgetting over
        # budget: bisect down towards the cheap search's last non-forgetting one
        state = SearchState(lam=lam * 2, lo=lam) if not first["forgets"] else SearchState(lam=(lo + lam) / 2, lo=lo, hi=lam)
        rows += probe_loop(probe, layer, theta0, grad, base_full, p, state, p["max_refine"], True)
    for k, r in enumerate(rows):
        r["probe"] = k
    return rows, outcome_of(layer, rows, state)


RANK = {"forgets within budget": 0, "forgets over budget": 1, "does not forget": 2}


def search_generated_front(probe: GeneratedProbe, layers: list[str], theta: dict, grads: dict, base: dict, p: dict):
    """Search every layer on generated images (cheap probes); the best (layer,
    edit), validated on the whole search set, its info and the trace:
    highest status, then UA, then CLIP score. ``base``: the base model at the
    whole search set (the probes' base is measured here at theirs)."""
    base_probe = probe(full=False) if probe.cheap else base
    fell_back = probe.cheap and base_probe["ua"] >= p["ua_target"]
    if fell_back:
        # the cheap probes' base already "forgets": every cheap probe would, and
        # the bisection would shrink toward 0; search at the whole set instead
        log.warning("SLUG (t2i): the base model reaches UA %.1f >= ua_target on the cheap probes (seeds %s, %d steps): "
                    "searching with the whole search set", base_probe["ua"], probe.seeds["probe"], probe.steps["probe"])
        probe.cheap, base_probe = False, base
    rows, outcomes = [], []
    for layer in layers:
        r, o = search_generated(probe, layer, theta[layer].detach(), grads[layer], base_probe, p)
        rows += r
        outcomes.append(o)
        log.info("layer %s: %s (probes)", layer, o["status"])
    usable = [o for o in outcomes if "metrics" in o]
    if not usable:
        raise UnlearnflowError("SLUG (t2i): every candidate layer has a zero gradient")
    best = min(usable, key=lambda o: (RANK[o["status"]], -o["metrics"]["ua"], -o["metrics"]["clip_score"]))
    layer, chosen = best["layer"], best
    info = {"criterion": p["criterion"], "base_search_metrics": base, "outcomes": outcomes,
            "probes_at": "the whole search set (the cheap probes' base already forgets)" if fell_back
            else "cheap probes, validated on the whole search set" if probe.cheap else "the whole search set"}
    if probe.cheap:
        v_rows, chosen = validate(probe, best, rows, theta[layer].detach(), grads[layer], base, p)
        rows += v_rows
        log.info("layer %s: %s (validated on the whole search set, %d probes)", layer, chosen["status"], len(v_rows))
        info.update(probe_metrics=best["metrics"], probe_lambda=best["lam"], probe_status=best["status"],
                    base_probe_metrics=base_probe, validation_probes=len(v_rows))
    info.update(layer=layer, **{"lambda": chosen["lam"]}, status=chosen["status"], search_metrics=chosen["metrics"],
                why=f"{best['status']} on the probes; highest UA then CLIP score among {len(usable)} text front "
                    f"layers" + (f"; on the whole search set: {chosen['status']}" if probe.cheap else ""))
    return layer, edited(theta[layer].detach(), grads[layer], chosen["lam"]), info, pd.DataFrame(rows)


def run(ctx, params: dict):
    from ..gradients import load_gradients
    from ..io import read_parquet
    from ..metrics import images as im
    from ..models.clip import load_clip

    p = method_table.merge_params("t2i", "slug", params)  # an unknown key is an error
    if p["criterion"] not in CRITERIA:
        raise UnlearnflowError(f"methods.slug (t2i): criterion {p['criterion']!r} is not one of {', '.join(CRITERIA)}")
    grads, meta = load_gradients(ctx.grad_forget)
    clip_bundle = load_clip(ctx.clip_dir, device=ctx.bundle.device)
    want = ctx.bundle.info.get("text_encoder_fingerprint")
    have = clip_bundle.info.get("fingerprint")
    if want and have and want != have:
        raise UnlearnflowError(
            f"{ctx.clip_dir}: this CLIP is not the text encoder of {ctx.bundle.model_dir} (fingerprints differ)"
        )
    if meta.get("model_fingerprint") not in (None, "", have):
        raise UnlearnflowError(f"{ctx.grad_forget}: computed on another CLIP (fingerprint mismatch)")
    table = read_parquet(ctx.layers)
    layers = text_front_layers(table, ctx.bundle.text_layers, p["max_layers"], p["layer_choice"])
    theta = dict(clip_bundle.model.named_parameters())
    t0 = time.perf_counter()
    if p["criterion"] == "clip":
        from ..metrics.clip_eval import EvalSuite
        from .slug import run_slug

        text_table = table[table["name"].isin(layers)]  # the usable text front layers
        out = run_slug(clip_bundle, EvalSuite.load(ctx.val_sets, ctx.target, clip_bundle.preprocess), grads, text_table,
                       {**p["clip_search"], "max_layers_per_tower": p["max_layers"]})
        (layer, tensor), = out["tensors"].items()
        info = {"criterion": "clip", "layer": layer, "lambda": out["choice"]["lam"], "status": out["choice"]["status"],
                "why": out["choice"]["why"], "val_metrics": out["choice"]["metrics"]}
        trace, searched = out["trace"], layers
    else:
        net = im.clip_feature_net(clip_bundle.model, clip_bundle.tokenizer, "search", clip_bundle.device)
        probe = GeneratedProbe(ctx, clip_bundle, net, p)
        base = probe()
        if base["ua"] >= p["ua_target"]:
            # nothing to search: the smallest forgetting step would shrink to 0,
            # so say so and store theta(0) itself (an exact no-op) instead
            log.warning(
                "SLUG (t2i): the base model already reaches UA %.1f >= ua_target %.1f on the search prompts "
                "(seeds %s): no edit; more search_seeds or a higher ua_target give the search a signal",
                base["ua"], p["ua_target"], list(p["search_seeds"]),
            )
            layer, searched, trace = layers[0], [], pd.DataFrame()
            tensor = theta[layer].detach()
            info = {"criterion": p["criterion"], "layer": layer, "lambda": 0.0, "status": "base already forgets",
                    "search_metrics": base, "base_search_metrics": base, "outcomes": [],
                    "why": f"the base model's UA on the search prompts ({base['ua']:.1f}) already meets "
                           f"ua_target ({p['ua_target']:g}): nothing to search, theta(0) kept"}
        else:
            layer, tensor, info, trace = search_generated_front(probe, layers, theta, grads, base, p)
            searched = layers
    info.update(naming="open_clip", layers_searched=searched, search_seconds=time.perf_counter() - t0,
                params={k: v for k, v in p.items()}, probes=int(len(trace)))
    return MethodResult(tensors={layer: tensor.detach().cpu().contiguous()}, trace=trace, info=info)
