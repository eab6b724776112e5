"""The text-to-image family: its method context and the ``unlearn_t2i`` stage.

Methods (``METHODS["t2i"]``) get a :class:`T2IContext` and return the
tensors they changed; the delta is stored in the naming the method declares
(``info["naming"]``: ``open_clip`` for a text-encoder edit found on CLIP, so
SLUG stores its one tensor exactly as on CLIP; ``components`` for
``unet.``/``text_encoder.`` prefixed names).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd



@dataclass
class T2IContext:
    bundle: object  # models.diffusion.T2IBundle of the base model
    target: dict
    concepts: dict  # {identities|objects|styles: [names]}
    sampling: dict  # what a search generates with: {guidance} (never the evaluation seeds)
    forget_tar: Path | None = None
    retain_tar: Path | None = None
    clip_dir: Path | None = None  # the CLIP whose text tower is the text encoder
    grad_forget: Path | None = None
    layers: Path | None = None
    mask: Path | None = None
    val_sets: dict | None = None  # {identities|objects|styles: {tar, classes}}
    seed: int = 0


def unlearn_t2i_stage(inp: dict, out: dict, params: dict) -> None:
    """Rule ``unlearn_t2i``: one method on one target from the base model."""
    import torch

    from .. import provenance
    from ..io import write_json, write_parquet
    from ..metrics.t2i_eval import eval_sets_of
    from ..models.clip import resolve_device
    from ..models.diffusion import load_t2i
    from . import get_method, save_delta

    if params.get("threads"):
        torch.set_num_threads(int(params["threads"]))
    method = params["method"]
    module = get_method(method, "t2i")
    seed = int(params.get("seed", 0))
    torch.manual_seed(seed)
    bundle = load_t2i(Path(inp["model"]).parent, device=resolve_device(params.get("device", "auto")))
    ctx = T2IContext(
        bundle=bundle,
        target=params["target"],
        concepts=params["concepts"],
        sampling={"guidance": float(params["guidance"])},
        forget_tar=inp.get("forget"),
        retain_tar=inp.get("retain"),
        clip_dir=Path(inp["clip_config"]).parent if inp.get("clip_config") else None,
        grad_forget=inp.get("grad_forget"),
        layers=inp.get("layers"),
        mask=inp.get("mask"),
        val_sets=eval_sets_of(inp, "val"),
        seed=seed,
    )
    t0 = time.time()
    result = module.run(ctx, params.get("params", {}))
    seconds = time.time() - t0
    base = bundle.info.get("fingerprint", "")
    prov = provenance.this_job(method=method, target=params["target"]["id"], seed=seed, base_fingerprint=base)
    naming = result.info.get("naming", "components")
    save_delta(out["delta"], result.tensors, method=method, base=base, provenance=prov, family="t2i", naming=naming)
    write_parquet(out["trace"], result.trace if len(result.trace.columns) else pd.DataFrame({"probe": []}))
    write_json(out["info"], {"method": method, "target": params["target"], "seconds": seconds, **result.info,
                             "changed_tensors": sorted(result.tensors), "provenance": prov})
    print(f"{method}: changed {len(result.tensors)} tensor(s) in {seconds:.1f} s")
