"""FT: plain fine-tuning on the retain set, a baseline of SLUG's CLIP tables.

SLUG (Cai, Tan, Asif; arXiv 2407.11867, ICML 2025) reports FT as "CLIP loss
on the retain set": forget_weight 0, retain_weight 1, i.e. each step
descends on ``+L_retain`` (CLIP's InfoNCE) and never looks at the forget set;
it forgets only by catastrophic drift. An epoch is one pass over the retain
set. The loop, its sign convention and the frozen ``logit_scale`` are in
:mod:`unlearnflow.methods.finetune`.

The paper's ViT-B-32 settings are ``finetune.PAPER``; DEFAULTS are scaled
for the tiny default CLIP (3.5 M parameters, pretrained at lr 5e-4): the
paper's lr would not move it measurably.
"""

from .. import method_table
from .finetune import finetune_method

DEFAULTS = method_table.defaults("clip", "ft")  # the one source: unlearnflow.method_table
run = finetune_method("ft", DEFAULTS)  # the method interface (see unlearnflow.methods)
