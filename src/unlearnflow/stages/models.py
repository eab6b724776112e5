"""One function per rule of workflow/rules/models.smk: I/O here, algorithms in
:mod:`unlearnflow.models.clip`."""

from __future__ import annotations

import json
from pathlib import Path


def pretrain_clip(inp: dict, out: dict, params: dict) -> None:
    """Rule ``pretrain_clip``: the embedded default's tiny CLIP, trained on the shards."""
    from ..models.clip import tiny_config, train_tiny_clip

    shards = inp["shards"] if isinstance(inp["shards"], list) else [inp["shards"]]
    t = params["train"]
    info = train_tiny_clip(
        shards,
        Path(out["config"]).parent,
        model_cfg=tiny_config(params.get("model_cfg")),
        epochs=int(t["epochs"]),
        batch_size=int(t["batch_size"]),
        lr=float(t["lr"]),
        weight_decay=float(t["weight_decay"]),
        warmup_steps=int(t["warmup_steps"]),
        seed=int(params["seed"]),
        device=params.get("device", "auto"),
        threads=params.get("threads"),
        heldout_fraction=float(params["heldout_fraction"]),
        data_seed=int(params["data_seed"]),
    )
    print(json.dumps(info["train"], indent=1))


def export_clip(inp: dict, out: dict, params: dict) -> None:
    """Rule ``export_clip``: an open_clip model (architecture + tag or checkpoint) in our layout."""
    from ..models.clip import export_open_clip

    info = export_open_clip(
        params["arch"],
        params.get("pretrained"),
        Path(out["config"]).parent,
        cache_dir=params.get("cache_dir"),
        extra={"source_stamp": params.get("source_stamp"), "source_files": len(inp.get("source") or [])},
    )
    print(f"exported {info['arch']} / {info['pretrained']}: {info['n_params']} parameters")
