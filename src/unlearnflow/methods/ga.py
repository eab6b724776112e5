"""GA: gradient ascent on the forget set, a baseline of SLUG's CLIP tables.

SLUG (Cai, Tan, Asif; arXiv 2407.11867, ICML 2025) compares against GA:
forget_weight 1, retain_weight 0. Each step descends on ``-L_forget``, i.e.
*ascends* the forget loss (mean 1 - cos(image, own caption)); one plain SGD
step moves theta by ``+lr * grad L_forget``. Nothing holds the retain
utility, which is why GA loses most of it in the paper (ImageNet 35.9,
CelebA 24.9 on ViT-B-32). An epoch is one pass over the forget set. The
loop is :mod:`unlearnflow.methods.finetune`.

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
    "retain_weight": 0.0,
}


def run(ctx, params: dict):
    """The method interface (see unlearnflow.methods)."""
    return run_finetune(ctx, params, method="ga", defaults=DEFAULTS)
