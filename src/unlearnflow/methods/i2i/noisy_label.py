"""NOISY LABEL, a baseline of Li et al. (ICLR 2024): train the full model
with noise images as the ground truth of the forget set::

    loss = retain_alpha * MSE(G(T(x_r)), x_r) + forget_alpha * MSE(G(T(x_f)), n)

with n the loop's noise images (Gaussian, the forget batch's mean and std,
clamped to [0, 1]). ``train: full`` (default) or ``encoder``.
"""

from __future__ import annotations

from ... import method_table
from .loop import mse, noise_images, unlearn

DEFAULTS = method_table.defaults("i2i", "noisy_label")  # the one source: unlearnflow.method_table


def objective(s):
    p = s.params
    n = noise_images(s.x_f, p["noise"], s.generator)
    l_r = mse(s.student(s.x_r, s.m_r), s.x_r)
    l_f = mse(s.student(s.x_f, s.m_f), n)
    loss = float(p["retain_alpha"]) * l_r + float(p["forget_alpha"]) * l_f
    return loss, {"retain_loss": l_r.item(), "forget_loss": l_f.item()}


def run(ctx, params: dict):
    """The method interface (see unlearnflow.methods)."""
    return unlearn(ctx, params, method="noisy_label", defaults=DEFAULTS, objective=objective, train="full")
