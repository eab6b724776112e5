"""SSD: Selective Synaptic Dampening (Foster, Schoepf, Brintrup; arXiv 2308.07707, AAAI 2024).

A baseline of SLUG's CLIP tables (Cai, Tan, Asif; arXiv 2407.11867) with
alpha = 10 and lambda in linspace(0.1, 5, 10). No training: two passes that
compute diagonal-Fisher-style importances, then one multiplicative edit.

- I_f: mean over batches of the *squared* per-batch gradient of the forget
  loss (mean 1 - cos(image, own caption)) on the forget set;
- I_d: the same for the retain loss (CLIP's InfoNCE) on the retain set
  (Foster et al. use the full training set; the retain set stands in for it).
  Squared gradients have no sign: there is no ascent/descent convention here.
- Every element with ``I_f > alpha * I_d`` is dampened,

      theta <- theta * min(lambda * I_d / I_f, 1),

  every other element is left bit-identical. ``logit_scale`` is never
  touched. An element with I_d = 0 < I_f is zeroed.

Sign of lambda: a *larger* lambda dampens *less* (the factor grows with it;
with lambda >= alpha the min(., 1) can leave selected elements untouched, and
with lambda < alpha every selected element shrinks by at least lambda/alpha).
``alpha`` alone decides *which* elements are touched; lambda how much.

lambda is either fixed (a number, or a one-element list: no search, no
evaluation) or a list probed on the *validation* split (EvalSuite), in one
of two ways (``lambda_mode``):

- ``cumulative`` (the reference loop of SLUG's baselines): the lambdas are
  epochs, in the order given (the paper's linspace(0.1, 5, 10): strongest
  first); each epoch dampens the weights the previous one left, with the
  importances of theta(0), so after epoch k the selected elements carry the
  product of the first k factors. The choice is the first epoch (the least
  dampened model) that reaches the forget target (forget metric <=
  forget_target) with every utility drop within its budget.
- ``independent``: each lambda from theta(0), probed from gentle to strong
  (descending lambda); the choice is the gentlest dampening (largest
  lambda) that forgets within budget.

If no probe forgets within budget: the one with the lowest forget metric,
then the highest utility (sum of the budgeted metrics), then the gentlest.
The trace has one row per probe (docs/fidelity.md item 6: the two modes on
the default).
"""

from __future__ import annotations

import logging
import time

import pandas as pd
import torch

from .. import method_table
from ..gradients import iter_batches, set_loss
from ..io import UnlearnflowError
from ..metrics.clip_eval import SEARCH_METRICS, within_budget
from ..models.clip import normalise
from .finetune import FROZEN, changed_tensors, merge_params, snapshot

log = logging.getLogger(__name__)

PAPER_LAMBDAS = method_table.SSD_LAMBDAS  # linspace(0.1, 5, 10)

DEFAULTS = method_table.defaults("clip", "ssd")  # the one source: unlearnflow.method_table
LAMBDA_MODES = ("cumulative", "independent")

SIGN = "theta * min(lambda * I_d / I_f, 1) where I_f > alpha * I_d; larger lambda = gentler"


# ----------------------------------------------------------- importances
def importances(bundle, batches, loss: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Mean over batches of the squared per-batch gradient of ``loss``; no updates.

    ``batches`` yields (uint8 images, tokens), e.g. ``iter_batches(tar, bundle, bs)``.
    ``logit_scale`` gets no importance (it is never dampened).
    """
    model, device = bundle.model, bundle.device
    model.eval()
    params = {n: p for n, p in model.named_parameters() if n not in FROZEN}
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.requires_grad_(n in params)
        p.grad = None
    imp = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    n_batches = n_samples = 0
    loss_sum = 0.0
    try:
        for images, tokens in batches:
            if loss == "contrastive" and len(images) < 2:
                continue  # InfoNCE of one pair is 0
            model.zero_grad(set_to_none=True)
            x = normalise(images.to(device))
            value = set_loss(loss, model.encode_image(x), model.encode_text(tokens.to(device)), model.logit_scale)
            value.backward()
            with torch.no_grad():
                for n, p in params.items():
                    if p.grad is not None:
                        imp[n] += p.grad.float().pow(2)
            n_batches += 1
            n_samples += len(images)
            loss_sum += value.item()
        if n_batches == 0:
            raise UnlearnflowError("empty set: no batch to compute importances on")
    finally:
        for n, p in model.named_parameters():
            p.grad = None
            p.requires_grad_(saved[n])
    for v in imp.values():
        v.div_(n_batches)
    return imp, {"batches": n_batches, "samples": n_samples, "mean_loss": loss_sum / n_batches}


# ------------------------------------------------------------- dampening
def selected(i_f: torch.Tensor, i_d: torch.Tensor, alpha: float) -> torch.Tensor:
    """The elements SSD touches: I_f > alpha * I_d."""
    return i_f > alpha * i_d


def dampen(theta: torch.Tensor, i_f: torch.Tensor, i_d: torch.Tensor, alpha: float, lam: float) -> torch.Tensor:
    """theta * min(lam * I_d / I_f, 1) where I_f > alpha * I_d; theta elsewhere (bit-identical)."""
    i_f = i_f.to(theta.device, torch.float32)
    i_d = i_d.to(theta.device, torch.float32)
    sel = selected(i_f, i_d, alpha)
    safe = torch.where(sel, i_f, torch.ones_like(i_f))  # selected elements have I_f > 0
    factor = (lam * i_d / safe).clamp(max=1.0)
    return torch.where(sel, (theta.float() * factor).to(theta.dtype), theta)


def _lambdas(value, mode: str = "independent") -> list[float]:
    """The probe order: as given for ``cumulative`` (epochs), gentle (large)
    to strong (small) for ``independent``."""
    if mode not in LAMBDA_MODES:
        raise UnlearnflowError(f"ssd: lambda_mode {mode!r} unknown; known: {list(LAMBDA_MODES)}")
    if isinstance(value, (int, float)):
        return [float(value)]
    lams = [float(v) for v in value]
    if not lams or any(not v > 0 for v in lams):
        raise UnlearnflowError(f"ssd: lambdas must be positive numbers, got {value!r}")
    if mode == "cumulative":
        return lams
    return sorted(set(lams), reverse=True)


def _forgets(m: dict, p: dict) -> bool:
    return m[p["forget_metric"]] <= p["forget_target"]


def choose(rows: list[dict], p: dict) -> dict:
    """The gentlest probe that forgets within budget, else the best compromise.

    Gentlest: the largest lambda (``independent``), the earliest epoch
    (``cumulative``: every epoch dampens further)."""
    if not rows:
        raise UnlearnflowError("ssd: no lambda was probed")
    keys = [k for k in p["utility_budget"] if k in rows[0]] or ["identity_acc1", "test_acc1"]
    cumulative = p.get("lambda_mode", DEFAULTS["lambda_mode"]) == "cumulative"

    def gentleness(r):
        return -r["order"] if cumulative else r["lam"]

    ok = [r for r in rows if r["forgets"] and r["within_budget"]]
    if ok:
        best = max(ok, key=gentleness)
        status = "forgets within budget"
        why = (
            f"the first epoch of {len(ok)} that forget within the utility budget (cumulative dampening)"
            if cumulative
            else f"the largest lambda (gentlest dampening) of {len(ok)} that forget within the utility budget"
        )
    else:
        best = min(rows, key=lambda r: (r[p["forget_metric"]], -sum(r[k] for k in keys), -gentleness(r)))
        status = "forgets over budget" if best["forgets"] else "does not forget"
        why = (
            f"no lambda forgets within budget; the lowest {p['forget_metric']}, "
            f"then the highest {' + '.join(keys)}, then the gentlest"
        )
    return {"lam": best["lam"], "order": best["order"], "status": status, "why": why, "row": best}


def _edit(params: dict, theta0: dict, imp_f: dict, imp_d: dict, alpha: float, lams) -> int:
    """Write theta(0) dampened by each lambda of ``lams`` in turn into the
    model; returns how many elements differ from theta(0)."""
    lams = [lams] if isinstance(lams, (int, float)) else list(lams)
    shrunk = 0
    with torch.no_grad():
        for n, p in params.items():
            new = theta0[n]
            for lam in lams:
                new = dampen(new, imp_f[n], imp_d[n], alpha, lam)
            shrunk += int((new != theta0[n]).sum())
            p.copy_(new)
    return shrunk


def run_ssd(bundle, imp_f: dict, imp_d: dict, params: dict, suite=None) -> dict:
    """Dampen ``bundle.model`` in place (left at the chosen lambda)."""
    p = params
    alpha = float(p["alpha"])
    mode = p.get("lambda_mode", DEFAULTS["lambda_mode"])
    lams = _lambdas(p["lambdas"], mode)
    named = dict(bundle.model.named_parameters())
    touched = {}
    n_sel = n_total = 0
    for n, t in imp_f.items():
        sel = selected(t, imp_d[n], alpha)
        n_total += sel.numel()
        k = int(sel.sum())
        n_sel += k
        if k:
            touched[n] = named[n]
    theta0 = {n: t.detach().clone() for n, t in touched.items()}
    summary = {"alpha": alpha, "selected_elements": n_sel, "selected_fraction": n_sel / max(1, n_total)}
    summary["selected_tensors"] = len(touched)
    if len(lams) == 1:
        lam = lams[0]
        shrunk = _edit(touched, theta0, imp_f, imp_d, alpha, lam)
        trace = pd.DataFrame([{"order": 0, "lam": lam, "dampened_elements": shrunk}])
        return {"lam": lam, "status": "fixed lambda", "why": "one lambda given: no search", "trace": trace, **summary}
    if suite is None:
        raise UnlearnflowError("ssd: a list of lambdas is searched on the validation split, but no val_sets were given")
    model, tok, dev = bundle.model, bundle.tokenizer, bundle.device
    base = suite.evaluate(model, tok, dev)
    if _forgets(base, p):
        log.warning("ssd: the base model already meets the forget target on the validation split")
    rows = []

    def applied(order):  # the lambdas that make the model of probe `order`
        return lams[: order + 1] if mode == "cumulative" else [lams[order]]

    for order, lam in enumerate(lams):
        t0 = time.perf_counter()
        shrunk = _edit(touched, theta0, imp_f, imp_d, alpha, applied(order))
        m = suite.evaluate(model, tok, dev)
        rows.append(
            {
                "order": order,
                "lam": lam,
                "dampened_elements": shrunk,
                "forgets": _forgets(m, p),
                "within_budget": within_budget(base, m, p["utility_budget"]),
                "seconds": time.perf_counter() - t0,
                **{k: m[k] for k in SEARCH_METRICS if k in m},
            }
        )
        log.info("ssd lambda %.4g: %s", lam, {k: rows[-1][k] for k in ("fa1", "identity_acc1", "test_acc1")})
    best = choose(rows, p)
    _edit(touched, theta0, imp_f, imp_d, alpha, applied(best["order"]))
    return {
        "lam": best["lam"],
        "lambda_mode": mode,
        "lambdas_applied": applied(best["order"]),
        "status": best["status"],
        "why": best["why"],
        "val_metrics": {k: best["row"][k] for k in ("fa1", "fa5", "identity_acc1", "test_acc1")},
        "base_val_metrics": base,
        "trace": pd.DataFrame(rows),
        **summary,
    }


def run(ctx, params: dict):
    """The method interface (see unlearnflow.methods)."""
    from ..metrics.clip_eval import EvalSuite
    from . import MethodResult

    p = merge_params("ssd", DEFAULTS, params)
    lams = _lambdas(p["lambdas"], p["lambda_mode"])
    if len(lams) > 1 and ctx.val_sets is None:
        raise UnlearnflowError("ssd: a list of lambdas is searched on the validation split, but no val_sets were given")
    bundle = ctx.bundle
    theta0 = snapshot(bundle.model)
    t0 = time.perf_counter()
    bs = int(p["batch_size"])
    for name, tar in (("forget", ctx.forget_tar), ("retain", ctx.retain_tar)):
        if tar is None:
            raise UnlearnflowError(f"ssd: needs the {name} set")
    try:
        imp_f, stats_f = importances(bundle, iter_batches(ctx.forget_tar, bundle, bs), p["forget_loss"])
    except UnlearnflowError as exc:
        raise UnlearnflowError(f"{ctx.forget_tar}: {exc}") from exc
    try:
        imp_d, stats_d = importances(bundle, iter_batches(ctx.retain_tar, bundle, bs), p["retain_loss"])
    except UnlearnflowError as exc:
        raise UnlearnflowError(f"{ctx.retain_tar}: {exc}") from exc
    imp_seconds = time.perf_counter() - t0
    suite = EvalSuite.load(ctx.val_sets, ctx.target, bundle.preprocess) if len(lams) > 1 else None
    out = run_ssd(bundle, imp_f, imp_d, p, suite)
    tensors = changed_tensors(bundle.model, theta0)
    trace = out.pop("trace")
    info = {
        "params": p,
        "lambda": out.pop("lam"),
        **out,
        "importance_forget": stats_f,
        "importance_retain": stats_d,
        "importance_seconds": imp_seconds,
        "probes": int(len(trace)) if len(lams) > 1 else 0,
        "n_changed_tensors": len(tensors),
        "sign": SIGN,
    }
    return MethodResult(tensors=tensors, trace=trace, info=info)


__all__ = ["run", "run_ssd", "importances", "selected", "dampen", "choose", "DEFAULTS", "PAPER_LAMBDAS"]
