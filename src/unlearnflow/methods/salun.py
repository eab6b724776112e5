"""SalUn: saliency unlearning (Fan et al., ICLR 2024, arXiv 2310.12508) on CLIP.

As SLUG's baseline (Cai, Tan, Asif; arXiv 2407.11867): GA+FT restricted to
the salient weights. The mask (``salun_masks`` stage, :mod:`unlearnflow.masks`)
keeps the top fraction (0.5 by default) of all weights by |grad L_forget|,
thresholded globally over the model. Each step descends on
``-forget_weight * L_forget + retain_weight * L_retain`` (ascent on the
forget loss); after each backward ``grad <- grad * mask``, and after each
step the non-salient weights *and their optimizer state* are restored, so
AdamW's decoupled weight decay cannot move them: every non-salient weight
ends bit-identical to the base model's (see
:mod:`unlearnflow.methods.finetune`).

Mask file: safetensors of ``torch.bool`` tensors named like
``model.named_parameters()``, metadata ``{"format": "unlearnflow.mask/1", ...}``.
A parameter the file leaves out is treated as non-salient (frozen) and
listed in the info; ``logit_scale`` never trains.

The paper's ViT-B-32 settings::

    PAPER = {"optimizer": "adamw", "lr": 1e-7, "batch_size": 32,
             "weight_decay": 0.1, "epochs": 10, "schedule": "cosine",
             "mask_fraction": 0.5}

DEFAULTS are scaled for the tiny default CLIP (3.5 M parameters).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .. import method_table
from ..io import InputFileError, UnlearnflowError
from .finetune import FROZEN, PAPER, run_finetune  # noqa: F401  (PAPER: documented values)

log = logging.getLogger(__name__)



DEFAULTS = method_table.defaults("clip", "salun")  # the one source: unlearnflow.method_table


def load_mask(path, model) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """Read and check a mask file against ``model``: (mask, metadata, summary).

    Errors name the file: not found, unreadable, wrong format, a tensor that
    is not bool, a name the model lacks, a shape that differs.
    """
    from ..masks import load_mask as read_mask

    path = Path(path)
    mask, meta = read_mask(path)  # format, bool dtype and kept count checked there
    params = dict(model.named_parameters())
    unknown = sorted(set(mask) - set(params))
    if unknown:
        raise InputFileError(
            path, f"mask names do not match the model: {len(unknown)} unknown parameter(s), e.g. {unknown[:3]}"
        )
    for n, m in mask.items():
        if m.dtype != torch.bool:
            raise InputFileError(path, f"mask {n!r} has dtype {m.dtype}, expected torch.bool")
        if tuple(m.shape) != tuple(params[n].shape):
            raise InputFileError(
                path, f"mask {n!r} has shape {tuple(m.shape)}, the model's is {tuple(params[n].shape)}"
            )
    missing = sorted(n for n in params if n not in mask and n not in FROZEN)
    if missing:
        log.warning("%s: %d parameter(s) not in the mask are frozen, e.g. %s", path, len(missing), missing[:3])
    trainable = [n for n in params if n not in FROZEN]
    total = sum(params[n].numel() for n in trainable)
    salient = sum(int(mask[n].sum()) for n in trainable if n in mask)
    if salient == 0:
        raise InputFileError(path, "the mask has no salient element: nothing would be unlearned")
    summary = {
        "mask_file": str(path),
        "mask_salient_elements": salient,
        "mask_salient_fraction": salient / total,  # over the trainable parameters
        "mask_tensors_touched": sum(1 for n in trainable if n in mask and bool(mask[n].any())),
        "mask_missing_parameters": missing,
        **{f"mask_meta_{k}": v for k, v in meta.items() if "fraction" in k},
    }
    return mask, meta, summary


def run(ctx, params: dict):
    """The method interface (see unlearnflow.methods)."""
    if ctx.mask is None:
        raise UnlearnflowError("salun: needs a saliency mask file (ctx.mask is None); the salun_masks stage writes it")
    mask, meta, summary = load_mask(ctx.mask, ctx.bundle.model)
    want = params.get("mask_fraction", DEFAULTS["mask_fraction"])
    have = meta.get("fraction")
    if have is not None and want is not None:
        try:
            if abs(float(have) - float(want)) > 1e-9:
                log.warning("salun: mask_fraction %s but %s was made for fraction %s", want, ctx.mask, have)
        except ValueError:
            pass
    train_params = {k: v for k, v in params.items() if k != "mask_fraction"}
    defaults = {k: v for k, v in DEFAULTS.items() if k != "mask_fraction"}
    result = run_finetune(ctx, train_params, method="salun", defaults=defaults, mask=mask, info=summary)
    result.info["params"]["mask_fraction"] = want
    return result
