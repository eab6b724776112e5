"""FT: plain fine-tuning on the retain set, a baseline of SLUG's CLIP tables.

SLUG (Cai, Tan, Asif; arXiv 2407.11867, ICML 2025) reports FT as "CLIP loss
on the retain set": forget_weight 0, retain_weight 1, i.e. each step
descends on ``+L_retain`` (CLIP's InfoNCE) and never looks at the forget set;
it forgets only by catastrophic drift. An epoch is one pass over the retain
set. The loop, its sign convention and the frozen ``logit_scale`` are in
:mod:`unlearnflow.methods.finetune`.

The paper's ViT-B-32 settings::

    PAPER = {"optimizer": "adamw", "lr": 1e-7, "batch_size": 32,
             "weight_decay": 0.1, "epochs": 10, "schedule": "cosine"}

DEFAULTS are scaled for the tiny default CLIP (3.5 M parameters, pretrained
at lr 5e-4): the paper's lr would not move it measurably.
"""

from __future__ import annotations

from .finetune import FINETUNE_DEFAULTS, PAPER, run_finetune  # noqa: F401  (PAPER: documented values)


DEFAULTS = {
    **FINETUNE_DEFAULTS,
    "forget_weight": 0.0,
    "retain_weight": 1.0,
}


def run(ctx, params: dict):
    """The method interface (see unlearnflow.methods)."""
    return run_finetune(ctx, params, method="ft", defaults=DEFAULTS)
