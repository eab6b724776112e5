"""GA+FT: gradient ascent on the forget set plus fine-tuning on the retain set.

A baseline of SLUG's CLIP tables (Cai, Tan, Asif; arXiv 2407.11867, ICML
2025). Each step pairs a forget batch with the next retain batch and
descends on ``-forget_weight * L_forget + retain_weight * L_retain``:
ascent on the forget loss (mean 1 - cos), descent on CLIP's InfoNCE on the
retain set. An epoch is one pass over the forget set (the retain set is
cycled). The loop is :mod:`unlearnflow.methods.finetune`; SalUn is this
method restricted to a saliency mask (:mod:`unlearnflow.methods.salun`).

Settings: ``finetune.PAPER`` (the paper's, ViT-B-32); DEFAULTS (both weights
1) are scaled for the tiny default CLIP (3.5 M parameters).
"""

from .. import method_table
from .finetune import finetune_method

DEFAULTS = method_table.defaults("clip", "ga_ft")  # the one source: unlearnflow.method_table
run = finetune_method("ga_ft", DEFAULTS)  # the method interface (see unlearnflow.methods)
