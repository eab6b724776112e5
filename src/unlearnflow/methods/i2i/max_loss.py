"""MAX LOSS, a baseline of Li et al. (ICLR 2024): ascend the model's own
training loss on the forget set, descend it on the retain set::

    loss = retain_alpha * MSE(G(T(x_r)), x_r) - forget_alpha * MSE(G(T(x_f)), x_f)

with G = D(E(.)) the full model and its masked-reconstruction loss (the
loss it was trained with). ``train: full`` (default, as the reference's
"full model" baselines) or ``encoder``. The reported ``forget_loss`` is the
reconstruction error being maximised.
"""

from __future__ import annotations

from ... import method_table
from .loop import mse, unlearn

DEFAULTS = method_table.defaults("i2i", "max_loss")  # the one source: unlearnflow.method_table


def max_loss_terms(out_f, x_f, out_r, x_r, retain_alpha: float, forget_alpha: float):
    l_r = mse(out_r, x_r)
    l_f = mse(out_f, x_f)
    return retain_alpha * l_r - forget_alpha * l_f, l_r, l_f


def objective(s):
    p = s.params
    loss, l_r, l_f = max_loss_terms(
        s.student(s.x_f, s.m_f), s.x_f, s.student(s.x_r, s.m_r), s.x_r, float(p["retain_alpha"]), float(p["forget_alpha"])
    )
    return loss, {"retain_loss": l_r.item(), "forget_loss": l_f.item()}


def run(ctx, params: dict):
    """The method interface (see unlearnflow.methods)."""
    return unlearn(ctx, params, method="max_loss", defaults=DEFAULTS, objective=objective, train="full")
