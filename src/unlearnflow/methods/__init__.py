"""Unlearning methods: one module each, one registry (their stages: :mod:`unlearnflow.stages`).

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
