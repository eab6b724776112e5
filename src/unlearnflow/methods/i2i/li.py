"""Li et al. (ICLR 2024, arXiv 2402.00351): unlearning by the encoder alone.

Only the encoder E is fine-tuned; a frozen copy E0 of the original is the
teacher. With T the task's masking transform (the same mask for student and
teacher) and n Gaussian noise images matched to the forget batch's scalar
mean and std (clamped to [0, 1], as the reference code draws them)::

    loss = retain_alpha * MSE(E(T(x_r)), E0(T(x_r)))
         + forget_alpha * MSE(E(T(x_f)), E0(T(n)))

so retain images keep their embedding (and, the decoder being untouched,
their outputs), while forget images are embedded like noise and decode to
what the model makes of noise. The decoder is never trained: its weights
are bit-identical after unlearning, and the delta holds encoder tensors only.

The paper's ViT-B (MAGE) settings are ``loop.PAPER``; DEFAULTS are scaled
for the tiny default model. ``forget_alpha`` 0 is refused.
"""

from __future__ import annotations

import torch

from ... import method_table
from .loop import li_loss, noise_images, unlearn

DEFAULTS = method_table.defaults("i2i", "li")  # the one source: unlearnflow.method_table


def objective(s):
    p = s.params
    with torch.no_grad():
        z_r0 = s.teacher.encode(s.x_r, s.m_r)
        z_n0 = s.teacher.encode(noise_images(s.x_f, p["noise"], s.generator), s.m_f)
    z_r = s.student.encode(s.x_r, s.m_r)
    z_f = s.student.encode(s.x_f, s.m_f)
    loss, l_r, l_f = li_loss(z_f, z_n0, z_r, z_r0, float(p["retain_alpha"]), float(p["forget_alpha"]))
    return loss, {"retain_loss": l_r.item(), "forget_loss": l_f.item()}


def run(ctx, params: dict, method: str = "li", defaults: dict | None = None):
    """The method interface (see unlearnflow.methods)."""
    params = dict(params or {})
    if params.get("train", "encoder") != "encoder":
        from ...io import UnlearnflowError

        raise UnlearnflowError(f"{method}: fine-tunes the encoder only (train: encoder), got train: {params['train']!r}")
    return unlearn(ctx, params, method=method, defaults=defaults or DEFAULTS, objective=objective, train="encoder")
