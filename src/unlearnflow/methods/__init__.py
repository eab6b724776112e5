"""Unlearning methods: one module each, one registry, one stage.

A method module defines ``run(ctx: MethodContext, params: dict) -> MethodResult``:
it gets the base model, the forget/retain sets, whatever precomputed inputs
it needs (gradients, layer table, masks) and its params, and returns the
tensors it changed. The registry is keyed by model family (``clip``, ``t2i``
for text-to-image diffusion, ``i2i`` for image-to-image models), since each
family has its own context; one rule per family (``unlearn_clip``,
``unlearn_t2i``, ``unlearn_i2i``) is generic over ``{method}``. Adding a
method is one module here plus one entry in ``METHODS`` (in
:mod:`unlearnflow.registry`, torch-free so the Snakefile can read it) and in
the config.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..io import UnlearnflowError
from ..registry import METHODS  # family -> method -> module


@dataclass
class MethodContext:
    bundle: object  # models.clip.ClipBundle of the base model
    target: dict
    forget_tar: Path | None = None
    retain_tar: Path | None = None
    grad_forget: Path | None = None
    grad_retain: Path | None = None
    layers: Path | None = None
    mask: Path | None = None  # SalUn saliency mask (bool per parameter)
    val_sets: dict | None = None  # {identities|objects: {tar, classes}}
    seed: int = 0


@dataclass
class MethodResult:
    tensors: dict  # parameter name -> new tensor (only what changed)
    trace: pd.DataFrame = field(default_factory=pd.DataFrame)
    info: dict = field(default_factory=dict)


def get_method(name: str, family: str = "clip"):
    """The module of method ``name`` for a model family (clip, t2i, i2i)."""
    if family not in METHODS:
        raise UnlearnflowError(f"unknown model family {family!r}; known families: {sorted(METHODS)}")
    known = METHODS[family]
    if name not in known:
        raise UnlearnflowError(f"unknown {family} method {name!r}; known methods: {sorted(known)}")
    return importlib.import_module(known[name])


def unlearn_stage(inp: dict, out: dict, params: dict) -> None:
    """Rule ``unlearn_clip``: run one method on one target from the base model."""
    import time

    import torch

    from .. import provenance
    from ..io import write_json, write_parquet
    from ..metrics.clip_eval import eval_sets_from
    from ..models.clip import load_clip, resolve_device

    if params.get("threads"):
        torch.set_num_threads(int(params["threads"]))
    method = params["method"]
    module = get_method(method)
    torch.manual_seed(int(params.get("seed", 0)))
    bundle = load_clip(Path(inp["config"]).parent, device=resolve_device(params.get("device", "auto")))
    ctx = MethodContext(
        bundle=bundle,
        target=params["target"],
        forget_tar=inp.get("forget"),
        retain_tar=inp.get("retain"),
        grad_forget=inp.get("grad_forget"),
        grad_retain=inp.get("grad_retain"),
        layers=inp.get("layers"),
        mask=inp.get("mask"),
        val_sets=eval_sets_from(inp, "val"),
        seed=int(params.get("seed", 0)),
    )
    t0 = time.time()
    result = module.run(ctx, params.get("params", {}))
    seconds = time.time() - t0
    base = bundle.info.get("fingerprint", "")
    prov = provenance.this_job(method=method, target=params["target"]["id"], seed=ctx.seed, base_fingerprint=base)
    save_delta(out["delta"], result.tensors, method=method, base=base, provenance=prov)
    write_parquet(out["trace"], result.trace if len(result.trace.columns) else pd.DataFrame({"probe": []}))
    info = {"method": method, "target": params["target"], "seconds": seconds, **result.info, "provenance": prov}
    info["changed_tensors"] = sorted(result.tensors)
    write_json(out["info"], info)
    print(f"{method}: changed {len(result.tensors)} tensor(s) in {seconds:.1f} s")


def save_delta(path, tensors: dict, *, method: str, base: str, provenance: dict | None = None, **meta_extra) -> None:
    """Only the changed tensors, as full replacement values (bit-exact reload);
    the metadata names the method, the base model and the job that made it
    (``provenance``, read back by :func:`unlearnflow.provenance.delta_provenance`)."""
    import json

    from ..io import save_tensors

    if not tensors:
        raise UnlearnflowError(f"{method}: the method changed no tensor")
    meta = {"format": "unlearnflow.delta/1", "method": method, "base_fingerprint": base, "kind": "replace", **meta_extra}
    if provenance is not None:
        meta["provenance"] = json.dumps(provenance, sort_keys=True, default=str)
    save_tensors(path, tensors, meta)
