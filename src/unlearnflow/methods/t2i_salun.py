"""SalUn for text-to-image diffusion (REFERENCE.md section 2).

Mask (rule ``t2i_salun_masks``), as the reference's
``SD/train-scripts/generate_mask.py``: the gradient over the UNet of the
denoising loss of the classifier-free-guided prediction
``pred_u + w (pred_c - pred_u)`` (``guidance`` w: the sampling guidance by
default; 1 = unguided) on the forget set (its images with their captions),
summed over batches (``clip_norm``: each batch's gradient clipped to that
norm first, as the reference's DDPM code; none by default, as its SD code);
the global top fraction of |g| over all UNet weights is salient.

Update (method ``salun``), as the reference's ``random_label.py``: on forget
pairs, ``MSE(eps(x_t, c_forget), eps(x_t, c_pseudo).detach())`` with the
pseudo prediction from the model being trained (``pseudo_target: live``;
``frozen``: from a frozen copy of the base model) and the pseudo prompt the
caption with the target renamed (SalUn's ``(c + 1) mod C``: the next concept
of the same domain by default, or a fixed phrase), plus ``alpha`` times the
denoising loss on retain pairs. Gradients are masked after every backward
pass and non-salient weights restored after every step, so they stay
bit-identical to the base model; only UNet weights move. docs/fidelity.md
item 5 has the effect of each choice on the default.
"""

from __future__ import annotations

import copy
import re
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .. import method_table
from ..io import UnlearnflowError
from ..training import MaskedUpdate, train_steps
from . import MethodResult

DEFAULTS = method_table.defaults("t2i", "salun")  # the one source: unlearnflow.method_table
PSEUDO_TARGETS = ("live", "frozen")


def pseudo_concept(target: dict, concepts: dict, pseudo: str) -> str:
    """SalUn's pseudo label: the next concept of the target's domain, or a phrase."""
    if pseudo != "next":
        return pseudo
    domain = {"identity": "identities", "object": "objects", "style": "styles"}[target["kind"]]
    names = concepts[domain]
    low = [n.lower() for n in names]
    if target["name"].lower() not in low:
        raise UnlearnflowError(f"target {target['name']!r} is not among the {domain} {names}")
    return names[(low.index(target["name"].lower()) + 1) % len(names)]


def rename(captions: list[str], name: str, new: str) -> list[str]:
    from ..data.select import name_regex

    pattern = re.compile(name_regex(name), re.IGNORECASE)
    return [pattern.sub(new, c) for c in captions]


def unet_forget_gradients(
    bundle, tar, *, batch_size: int, seed: int, guidance: float = 1.0, clip_norm: float | None = None
) -> tuple[dict, int]:
    """Sum over batches of the UNet gradient of the denoising loss of the
    prediction guided with ``guidance`` (:func:`models.diffusion.noise_loss`),
    each batch's clipped to ``clip_norm`` first when it is given."""
    from ..models.clip import load_pairs
    from ..models.diffusion import noise_loss, to_model_space

    images, captions = load_pairs([tar], bundle.image_size)
    gen = torch.Generator().manual_seed(seed)
    params = {n: p for n, p in bundle.unet.named_parameters()}
    for p in params.values():
        p.requires_grad_(True)
    total = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    batches = 0
    bundle.unet.eval()
    with torch.no_grad():
        uncond = bundle.encode_prompts([""])
    for i in range(0, len(captions), batch_size):
        with torch.no_grad():
            ctx = bundle.encode_prompts(captions[i : i + batch_size])
        x0 = to_model_space(bundle, images[i : i + batch_size])
        loss = noise_loss(bundle, x0, ctx, gen, uncond=uncond, guidance=guidance)
        grads = torch.autograd.grad(loss, list(params.values()))
        scale = 1.0
        if clip_norm is not None:
            norm = float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads)))
            scale = min(1.0, float(clip_norm) / norm) if norm > 0 else 0.0
        for (n, _), g in zip(params.items(), grads):
            total[n] += g.float() * scale
        batches += 1
    for p in params.values():
        p.requires_grad_(False)
    return total, batches


def run(ctx, params: dict):
    from ..masks import load_mask
    from ..models.clip import load_pairs
    from ..models.diffusion import noise_loss, to_model_space

    p = method_table.merge_params("t2i", "salun", params)  # an unknown key is an error
    if p["pseudo_target"] not in PSEUDO_TARGETS:
        raise UnlearnflowError(f"t2i salun: pseudo_target {p['pseudo_target']!r} unknown; known: {list(PSEUDO_TARGETS)}")
    b = ctx.bundle
    mask, _ = load_mask(ctx.mask)
    unet_params = dict(b.unet.named_parameters())
    masks = {}
    for name, m in mask.items():
        comp, _, rest = name.partition(".")
        if comp != "unet" or rest not in unet_params:
            raise UnlearnflowError(f"{ctx.mask}: {name!r} is not a UNet parameter of {b.model_dir}")
        masks[rest] = m.to(b.device)
    f_img, f_cap = load_pairs([ctx.forget_tar], b.image_size)
    r_img, r_cap = load_pairs([ctx.retain_tar], b.image_size)
    new = pseudo_concept(ctx.target, ctx.concepts, p["pseudo"])
    p_cap = rename(f_cap, ctx.target["name"], new)
    with torch.no_grad():
        f_ctx, p_ctx, r_ctx = (b.encode_prompts(c) for c in (f_cap, p_cap, r_cap))
    # the reference detaches the live model's prediction under the pseudo prompt
    pseudo_net = b.unet if p["pseudo_target"] == "live" else copy.deepcopy(b.unet).eval()
    theta0 = {n: t.detach().clone() for n, t in unet_params.items()}
    trainable = [n for n in unet_params if n in masks and bool(masks[n].any())]
    for n in trainable:
        unet_params[n].requires_grad_(True)
    opt = torch.optim.Adam([unet_params[n] for n in trainable], lr=float(p["lr"]))
    # SalUn: only salient weights receive gradient, and non-salient weights are
    # restored after each step (a no-op here: Adam without weight decay does not
    # move a weight whose gradient is 0); the optimizer state is left as it is
    update = MaskedUpdate({n: unet_params[n] for n in trainable}, masks, zero_state=False, theta0=theta0)
    gen = torch.Generator().manual_seed(ctx.seed)
    bs, rows, terms = int(p["batch_size"]), [], {}

    def loss_of(_step) -> torch.Tensor:
        fi = torch.randint(0, len(f_cap), (bs,), generator=gen)
        ri = torch.randint(0, len(r_cap), (bs,), generator=gen)
        x0 = to_model_space(b, f_img[fi])
        t = torch.randint(0, b.scheduler.config.num_train_timesteps, (bs,), generator=gen).to(b.device)
        xt = b.scheduler.add_noise(x0, torch.randn(x0.shape, generator=gen).to(b.device), t)
        with torch.no_grad():
            target = pseudo_net(xt, t, encoder_hidden_states=p_ctx[fi]).sample
        terms["forget"] = F.mse_loss(b.unet(xt, t, encoder_hidden_states=f_ctx[fi]).sample, target)
        terms["retain"] = noise_loss(b, to_model_space(b, r_img[ri]), r_ctx[ri], gen)
        return terms["forget"] + float(p["alpha"]) * terms["retain"]

    def record(step, loss, _lr, _hooked) -> None:
        rows.append({"step": step, "loss": loss.item(), "loss_forget": terms["forget"].item(), "loss_retain": terms["retain"].item()})

    b.unet.train()
    t0 = time.time()
    train_steps(opt, range(int(p["steps"])), loss_of, grad_hook=update.mask_grads,
                after_step=lambda: update.restore(opt), on_step=record)  # fmt: skip
    b.unet.eval()
    for n in trainable:
        unet_params[n].requires_grad_(False)
    changed = {f"unet.{n}": unet_params[n].detach().cpu().clone() for n in trainable
               if not torch.equal(unet_params[n].detach(), theta0[n])}
    kept = sum(int(masks[n].sum()) for n in masks)
    info = {"naming": "components", "pseudo_concept": new, "salient_weights": kept,
            "unet_weights": sum(t.numel() for t in unet_params.values()), "train_seconds": time.time() - t0,
            "final_loss": float(np.mean([r["loss"] for r in rows[-10:]])), "params": p}
    return MethodResult(tensors=changed, trace=pd.DataFrame(rows), info=info)
