"""GA+FT: gradient ascent on the forget set plus fine-tuning on the retain set.

A baseline of SLUG's CLIP tables (Cai, Tan, Asif; arXiv 2407.11867, ICML
2025). Each step pairs a forget batch with the next retain batch and
descends on ``-forget_weight * L_forget + retain_weight * L_retain``:
ascent on the forget loss (mean 1 - cos), descent on CLIP's InfoNCE on the
retain set. An epoch is one pass over the forget set (the retain set is
cycled). The loop is :mod:`unlearnflow.methods.finetune`; SalUn is this
method restricted to a saliency mask (:mod:`unlearnflow.methods.salun`).

The paper's ViT-B-32 settings::

    PAPER = {"optimizer": "adamw", "lr": 1e-7, "batch_size": 32,
             "weight_decay": 0.1, "epochs": 10, "schedule": "cosine"}

DEFAULTS are scaled for the tiny default CLIP (3.5 M parameters).
"""

from __future__ import annotations

from .finetune import FINETUNE_DEFAULTS, PAPER, run_finetune  # noqa: F401  (PAPER: documented values)


DEFAULTS = {
    **FINETUNE_DEFAULTS,
    "forget_weight": 1.0,
    "retain_weight": 1.0,
}


def run(ctx, params: dict):
    """The method interface (see unlearnflow.methods)."""
    return run_finetune(ctx, params, method="ga_ft", defaults=DEFAULTS)
