"""RANDOM ENCODER, a baseline of Li et al. (ICLR 2024): push the encoder's
output on forget images to Gaussian noise with the scalar mean and std of
the teacher's latent, keep the retain latents (encoder only, like Li et al.)::

    loss = retain_alpha * MSE(E(T(x_r)), E0(T(x_r)))
         + forget_alpha * MSE(E(T(x_f)), z),   z ~ N(mean(E0(T(x_f))), std(E0(T(x_f)))^2)

The difference from Li et al.: the forget target is random noise in latent
space, not the embedding of a noise image (which lies on what the decoder
knows how to decode).
"""

from __future__ import annotations

import torch

from ...models.i2i import flat_latent, latent_mse
from ... import method_table
from .loop import gaussian_like, unlearn

DEFAULTS = method_table.defaults("i2i", "random_encoder")  # the one source: unlearnflow.method_table


def objective(s):
    p = s.params
    with torch.no_grad():
        z_r0 = s.teacher.encode(s.x_r, s.m_r)
        z_f0 = flat_latent(s.teacher.encode(s.x_f, s.m_f))
        target = gaussian_like(z_f0, s.generator)
    l_r = latent_mse(s.student.encode(s.x_r, s.m_r), z_r0)
    l_f = latent_mse(s.student.encode(s.x_f, s.m_f), target)
    loss = float(p["retain_alpha"]) * l_r + float(p["forget_alpha"]) * l_f
    return loss, {"retain_loss": l_r.item(), "forget_loss": l_f.item()}


def run(ctx, params: dict):
    """The method interface (see unlearnflow.methods)."""
    params = dict(params or {})
    if params.get("train", "encoder") != "encoder":
        from ...io import UnlearnflowError

        raise UnlearnflowError(f"random_encoder: trains the encoder only (train: encoder), got train: {params['train']!r}")
    return unlearn(ctx, params, method="random_encoder", defaults=DEFAULTS, objective=objective, train="encoder")
