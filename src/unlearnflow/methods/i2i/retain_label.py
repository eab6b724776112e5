"""RETAIN LABEL, a baseline of Li et al. (ICLR 2024): push the outputs on
forget images to the teacher's outputs on retain images, keep the outputs
on retain images::

    loss = retain_alpha * MSE(G(T(x_r)), G0(T(x_r)))
         + forget_alpha * MSE(G(T(x_f)), G0(T'(x_r[perm])))

where G0 is the frozen original, x_r[perm] a shuffled retain batch, and T'
the forget sample's own mask (so the target has the forget sample's task).
``train: full`` (default) or ``encoder``.
"""

from __future__ import annotations

import torch

from ... import method_table
from .loop import mse, unlearn

DEFAULTS = method_table.defaults("i2i", "retain_label")  # the one source: unlearnflow.method_table


def retain_targets(teacher, x_r, m_f, generator):
    """The teacher's outputs on retain images (cycled to the forget batch's size,
    shuffled) under the forget samples' masks."""
    idx = torch.randperm(len(x_r), generator=generator).repeat(len(m_f) // len(x_r) + 1)[: len(m_f)]
    with torch.no_grad():
        return teacher(x_r[idx.to(x_r.device)], m_f)


def objective(s):
    p = s.params
    with torch.no_grad():
        t_r = s.teacher(s.x_r, s.m_r)
    t_f = retain_targets(s.teacher, s.x_r, s.m_f, s.generator)
    l_r = mse(s.student(s.x_r, s.m_r), t_r)
    l_f = mse(s.student(s.x_f, s.m_f), t_f)
    loss = float(p["retain_alpha"]) * l_r + float(p["forget_alpha"]) * l_f
    return loss, {"retain_loss": l_r.item(), "forget_loss": l_f.item()}


def run(ctx, params: dict):
    """The method interface (see unlearnflow.methods)."""
    return unlearn(ctx, params, method="retain_label", defaults=DEFAULTS, objective=objective, train="full")
