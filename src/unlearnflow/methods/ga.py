"""GA: gradient ascent on the forget set, a baseline of SLUG's CLIP tables.

SLUG (Cai, Tan, Asif; arXiv 2407.11867, ICML 2025) compares against GA:
forget_weight 1, retain_weight 0. Each step descends on ``-L_forget``, i.e.
*ascends* the forget loss (mean 1 - cos(image, own caption)); one plain SGD
step moves theta by ``+lr * grad L_forget``. Nothing holds the retain
utility, which is why GA loses most of it in the paper (ImageNet 35.9,
CelebA 24.9 on ViT-B-32). An epoch is one pass over the forget set. The
loop is :mod:`unlearnflow.methods.finetune`.

DEFAULTS (forget weight 1, retain weight 0) are scaled for the tiny default
CLIP (3.5 M parameters); the paper's ViT-B-32 settings are ``finetune.PAPER``.
"""

from .. import method_table
from .finetune import finetune_method

DEFAULTS = method_table.defaults("clip", "ga")  # the one source: unlearnflow.method_table
run = finetune_method("ga", DEFAULTS)  # the method interface (see unlearnflow.methods)
