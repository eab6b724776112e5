"""The unlearning job every model family shares (rules ``unlearn_clip``,
``unlearn_t2i``, ``unlearn_i2i``): load the base model, build the method's
context, run the method, save the delta (only the changed tensors), the
trace and an info record. A family says how to load its model and build its
context (:class:`Family`); the rest is here once."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Family:
    name: str  # clip | t2i | i2i (unlearnflow.method_table.FAMILIES)
    load: Callable  # (inp, device) -> (model or bundle, base fingerprint)
    context: Callable  # (model, inp, params) -> the methods' context
    empty_trace: str = "probe"  # the column of an empty trace (no search)
    seed_first: bool = True  # torch's global seed set before loading (the i2i loop seeds itself)
    target_in_record: bool = True
    delta_meta: Callable = lambda result: {}  # extra delta metadata
    # what the info record says besides the method (before the method's own info)
    info_head: Callable = lambda params, base: {"target": params["target"]}


def context_fields(inp: dict, params: dict) -> dict:
    """What every target-based family's context takes from the job: the
    target, its sets, the inputs its method declared (method_table needs),
    the seed."""
    return {
        "target": params["target"],
        "forget_tar": inp.get("forget"),
        "retain_tar": inp.get("retain"),
        "grad_forget": inp.get("grad_forget"),
        "layers": inp.get("layers"),
        "mask": inp.get("mask"),
        "seed": int(params.get("seed", 0)),
    }


def run_unlearning(family: Family, inp: dict, out: dict, params: dict) -> None:
    import pandas as pd
    import torch

    from .. import provenance
    from ..io import write_json, write_parquet
    from ..methods import get_method, save_delta
    from ..models.clip import resolve_device

    if params.get("threads"):
        torch.set_num_threads(int(params["threads"]))
    method = params["method"]
    module = get_method(method, family.name)
    seed = int(params.get("seed", 0))
    if family.seed_first:
        torch.manual_seed(seed)
    model, base = family.load(inp, resolve_device(params.get("device", "auto")))
    ctx = family.context(model, inp, params)
    t0 = time.time()
    result = module.run(ctx, dict(params.get("params") or {}))
    seconds = time.time() - t0
    target = {"target": params["target"]["id"]} if family.target_in_record else {}
    prov = provenance.this_job(method=method, **target, seed=seed, base_fingerprint=base)
    save_delta(out["delta"], result.tensors, method=method, base=base, provenance=prov, **family.delta_meta(result))
    trace = result.trace if len(result.trace.columns) else pd.DataFrame({family.empty_trace: []})
    write_parquet(out["trace"], trace)
    info = {"method": method, **family.info_head(params, base), "seconds": seconds, **result.info, "provenance": prov}
    info["changed_tensors"] = sorted(result.tensors)
    write_json(out["info"], info)
    parts = f" ({', '.join(result.info['changed_parts'])})" if result.info.get("changed_parts") else ""
    print(f"{method}: changed {len(result.tensors)} tensor(s){parts} in {seconds:.1f} s")
