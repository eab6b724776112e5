"""One function per rule of workflow/rules/unlearn.smk: I/O here, algorithms in
:mod:`unlearnflow.methods` (one module per method) and :mod:`unlearnflow.plots`."""

from __future__ import annotations

from pathlib import Path

from ..io import InputFileError


def _load_clip(inp: dict, device):
    from ..models.clip import load_clip

    bundle = load_clip(Path(inp["config"]).parent, device=device)
    return bundle, bundle.info.get("fingerprint", "")


def _clip_context(bundle, inp: dict, params: dict):
    from ..methods import MethodContext
    from ..metrics.clip_eval import eval_sets_from
    from .family import context_fields

    fields = context_fields(inp, params)
    return MethodContext(bundle=bundle, grad_retain=inp.get("grad_retain"), val_sets=eval_sets_from(inp, "val"), **fields)


def unlearn_clip(inp: dict, out: dict, params: dict) -> None:
    """Rule ``unlearn_clip``: run one method on one target from the base model."""
    from .family import Family, run_unlearning

    run_unlearning(Family("clip", _load_clip, _clip_context), inp, out, params)


def slug_search_plot(inp: dict, out: dict, params: dict) -> None:
    """Rule ``slug_search_plot``: the search trace of one (model, target)."""
    from ..io import read_json, read_parquet
    from ..plots import search_trace_plot

    trace = read_parquet(inp["trace"])
    info = read_json(inp["info"])
    if len(trace) and "lam" not in trace.columns:
        raise InputFileError(inp["trace"], f"not a step-size search trace (columns {list(trace.columns)})")
    search_trace_plot(trace, info, out["png"], params["title"])
    print(f"wrote {out['png']}: {len(trace)} probes")
