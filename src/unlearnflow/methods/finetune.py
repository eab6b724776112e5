"""The training loop shared by the fine-tuning baselines of SLUG's CLIP tables.

SLUG (Cai, Tan, Asif; arXiv 2407.11867, ICML 2025) compares against FT, GA,
GA+FT and SalUn (Fan et al., ICLR 2024, arXiv 2310.12508), all trained with
AdamW (lr 1e-7, batch 32, wd 0.1, 10 epochs, cosine schedule on ViT-B-32).
They differ only in the two loss weights and in SalUn's saliency mask, so
they share this one explicit loop.

Sign convention. Each step *descends* on

    loss = -forget_weight * L_forget(forget batch) + retain_weight * L_retain(retain batch)

so the minus sign makes it gradient *ascent* on the forget loss (L_forget is
``gradients.set_loss("cosine")``, mean 1 - cos(image, own caption), by
default) while the retain loss (CLIP's InfoNCE by default) is kept low. One
plain SGD step therefore moves theta by ``+lr * forget_weight * grad L_forget``
(the ``+grad`` convention of ``gradients.py``).

Epochs (``passes``). With both weights non-zero (GA+FT, SalUn) the reference
procedure, ``alternate``, makes an epoch a full pass of ascent over the
forget set followed by a full pass of descent over the retain set, each step
on one set only (REFERENCE.md: the SLUG baselines). ``joint`` makes an epoch
one pass over the forget set (the small one) where each step pairs a forget
batch with the next retain batch, cycling (and reshuffling) the retain set
as often as needed: ~|F|/|R| as many retain samples per epoch, a cheaper and
different procedure (docs/fidelity.md item 4). GA (``retain_weight == 0``)
passes over the forget set, FT (``forget_weight == 0``) over the retain set.
Both sets are loaded into memory once and reshuffled every epoch by a
``torch.Generator`` seeded with ``seed``: a run is reproducible. The LR
schedule runs over every step of every epoch.

Frozen temperature. ``logit_scale`` never trains: the temperature is not
what is being unlearned, and letting InfoNCE move it would change every
logit of the model (and zero-shot calibration) for reasons unrelated to the
target. It is also never returned as a changed tensor.

Weight decay follows open_clip's training code: not on gains, biases and
``logit_scale`` (``ndim < 2`` or "ln"/"bn"/"bias" in the name).

SalUn's mask (a bool tensor per parameter name, True = salient). After each
backward ``grad <- grad * mask``; after each optimizer step the non-salient
elements are copied back from theta(0) and their optimizer state (AdamW's
``exp_avg``/``exp_avg_sq``, SGD's ``momentum_buffer``) is zeroed, so neither
decoupled weight decay nor momentum can move them: they stay bit-identical.
Parameters with no salient element are simply frozen.
"""

from __future__ import annotations

import logging
import math
import time

import pandas as pd
import torch

from .. import method_table
from ..gradients import iter_batches, set_loss
from ..io import UnlearnflowError
from ..models.clip import normalise
from ..training import SCHEDULES, MaskedUpdate, lr_at, train_steps

log = logging.getLogger(__name__)

SIGN = "loss = -forget_weight * L_forget + retain_weight * L_retain, minimised (ascent on the forget loss)"
OPTIMIZERS = ("adamw", "sgd")
PASSES = ("alternate", "joint")
# The paper's settings for ViT-B-32, and the defaults every fine-tuning
# baseline shares, scaled for the tiny default CLIP (3.5 M parameters,
# pretrained at lr 5e-4: the paper's lr would not move it measurably).
PAPER = {"optimizer": "adamw", "lr": 1e-7, "batch_size": 32, "weight_decay": 0.1, "epochs": 10, "schedule": "cosine"}
FINETUNE_DEFAULTS = dict(method_table.FINETUNE)  # the one source: unlearnflow.method_table

FROZEN = ("logit_scale", "logit_bias")  # the temperature (and SigLIP's bias): never trained, never returned

# the keys every fine-tuning method accepts (its DEFAULTS give the values)
FINETUNE_KEYS = (
    "epochs",
    "max_steps",
    "lr",
    "weight_decay",
    "batch_size",
    "optimizer",
    "schedule",
    "warmup_steps",
    "passes",
    "forget_weight",
    "retain_weight",
    "forget_loss",
    "retain_loss",
)


# ------------------------------------------------------------------ data
def load_set(tar, bundle, name: str = "set") -> tuple[torch.Tensor, torch.Tensor]:
    """All pairs of a tar in memory: (uint8 images (N,3,H,W), tokens (N,L))."""
    if tar is None:
        raise UnlearnflowError(f"the {name} set is needed but no tar was given")
    imgs, toks = [], []
    for x, t in iter_batches(tar, bundle, 256):
        imgs.append(x)
        toks.append(t)
    if not imgs:
        raise UnlearnflowError(f"{tar}: the {name} set is empty")
    return torch.cat(imgs), torch.cat(toks)


class _Cycler:
    """Batches of indices from an endless stream of fresh permutations."""

    def __init__(self, n: int, batch_size: int, gen: torch.Generator):
        self.n, self.bs, self.gen = n, min(batch_size, n), gen
        self.buf = torch.empty(0, dtype=torch.long)

    def next(self) -> torch.Tensor:
        while len(self.buf) < self.bs:
            self.buf = torch.cat([self.buf, torch.randperm(self.n, generator=self.gen)])
        out, self.buf = self.buf[: self.bs], self.buf[self.bs :]
        return out


def _n_batches(n: int, batch_size: int, drop_single: bool) -> int:
    """How many batches ``_batches`` cuts ``n`` items into."""
    return n // batch_size + int(n % batch_size > int(drop_single))


def _batches(perm: torch.Tensor, batch_size: int, drop_single: bool) -> list[torch.Tensor]:
    out = [perm[i : i + batch_size] for i in range(0, len(perm), batch_size)]
    if drop_single and out and len(out[-1]) < 2:
        out.pop()  # a contrastive loss of one pair is 0: drop the batch
    return out


def epoch_plan(
    passes: str,
    n_forget: int,
    n_retain: int,
    batch_size: int,
    gen: torch.Generator,
    cycler: "_Cycler | None" = None,
    single_forget: bool = False,
    single_retain: bool = False,
) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
    """The steps of one epoch as (forget indices, retain indices), None = no
    batch of that set in the step.

    ``n_forget`` / ``n_retain`` of 0 mean the set is not trained on (FT / GA).
    ``alternate``: every forget batch of a fresh permutation, then every retain
    batch of another; ``joint``: every forget batch, each paired with the
    ``cycler``'s next retain batch. ``single_*``: drop a last batch of one pair
    of that set (its contrastive loss would be 0).
    """
    if passes not in PASSES:
        raise UnlearnflowError(f"passes {passes!r} unknown; known: {PASSES}")
    steps: list = []
    if n_forget:
        joint = bool(n_retain) and passes == "joint"
        forget = _batches(torch.randperm(n_forget, generator=gen), batch_size, single_forget and not joint)
        if joint:
            if cycler is None:
                raise UnlearnflowError("epoch_plan: joint passes need a retain cycler")
            return [(f, cycler.next()) for f in forget]
        steps += [(f, None) for f in forget]
    if n_retain:
        steps += [(None, r) for r in _batches(torch.randperm(n_retain, generator=gen), batch_size, single_retain)]
    return steps


# -------------------------------------------------------------- helpers
def snapshot(model) -> dict[str, torch.Tensor]:
    """theta(0): a detached copy of every parameter (on its device)."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed_tensors(model, theta0: dict) -> dict[str, torch.Tensor]:
    """The parameters that differ from theta(0) (``torch.equal``), as CPU tensors.

    ``logit_scale`` is never returned.
    """
    out = {}
    for n, p in model.named_parameters():
        if n in FROZEN or n not in theta0:
            continue
        if not torch.equal(p.detach(), theta0[n].to(p.device)):
            out[n] = p.detach().to("cpu").clone().contiguous()
    return out


def decays(name: str, p: torch.Tensor) -> bool:
    """open_clip's rule: no weight decay on gains, biases and the temperature."""
    return not (p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name)


def _check_mask(mask: dict, params: dict) -> None:
    unknown = sorted(set(mask) - set(params))
    if unknown:
        raise UnlearnflowError(f"mask has parameters the model lacks: {unknown[:5]}")
    for n, m in mask.items():
        if m.dtype != torch.bool:
            raise UnlearnflowError(f"mask {n}: dtype {m.dtype}, expected torch.bool")
        if tuple(m.shape) != tuple(params[n].shape):
            raise UnlearnflowError(f"mask {n}: shape {tuple(m.shape)} != parameter's {tuple(params[n].shape)}")


# ------------------------------------------------------------------ loop
def finetune(
    bundle,
    forget_tar,
    retain_tar,
    *,
    forget_weight: float,
    retain_weight: float,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    optimizer: str = "adamw",
    schedule: str = "cosine",
    warmup_steps: int = 0,
    passes: str = "alternate",
    mask: dict | None = None,
    seed: int = 0,
    forget_loss: str = "cosine",
    retain_loss: str = "contrastive",
    max_steps: int | None = None,
    restore_masked: bool = True,
) -> dict:
    """Train ``bundle.model`` in place; returns {trace (rows), steps, seconds, ...}.

    ``mask``: parameter name -> bool tensor (True = salient, trainable);
    parameters absent from it are treated as all-False (frozen).
    ``restore_masked=False`` only masks the gradients (the ablation that
    shows weight decay moving non-salient weights); SalUn never uses it.
    """
    if optimizer not in OPTIMIZERS:
        raise UnlearnflowError(f"optimizer {optimizer!r} unknown; known: {OPTIMIZERS}")
    if schedule not in SCHEDULES:
        raise UnlearnflowError(f"schedule {schedule!r} unknown; known: {SCHEDULES}")
    if passes not in PASSES:
        raise UnlearnflowError(f"passes {passes!r} unknown; known: {PASSES}")
    fw, rw = float(forget_weight), float(retain_weight)
    if fw == 0 and rw == 0:
        raise UnlearnflowError("forget_weight and retain_weight are both 0: nothing to train")
    if int(batch_size) < 1 or int(epochs) < 1:
        raise UnlearnflowError(f"batch_size ({batch_size}) and epochs ({epochs}) must be >= 1")
    batch_size, epochs = int(batch_size), int(epochs)
    model, device = bundle.model, bundle.device
    params = dict(model.named_parameters())

    # which parameters train, and how the mask constrains them
    trainable, salient = {}, {}  # name -> parameter / its mask
    if mask is not None:
        _check_mask(mask, params)
    for n, p in params.items():
        if n in FROZEN:
            continue
        if mask is None:
            trainable[n] = p
            continue
        m = mask.get(n)
        if m is None or not bool(m.any()):
            continue  # no salient element: frozen
        trainable[n] = p
        salient[n] = m.to(device)
    if not trainable:
        raise UnlearnflowError("no trainable parameter (is the mask all False?)")

    t_start = time.perf_counter()
    gen = torch.Generator().manual_seed(int(seed))
    forget = load_set(forget_tar, bundle, "forget") if fw != 0 else None
    retain = load_set(retain_tar, bundle, "retain") if rw != 0 or fw == 0 else None
    if retain is not None and retain_loss == "contrastive" and min(len(retain[0]), batch_size) < 2:
        raise UnlearnflowError(f"{retain_tar}: the contrastive retain loss needs batches of at least 2 pairs")
    n_f = len(forget[0]) if forget is not None else 0
    n_r = len(retain[0]) if retain is not None else 0
    joint = bool(n_f and n_r) and passes == "joint"  # retain batches ride along with the forget steps
    single = {"single_forget": forget_loss == "contrastive", "single_retain": retain_loss == "contrastive"}
    steps_per_epoch = _n_batches(n_f, batch_size, single["single_forget"] and not joint)
    steps_per_epoch += 0 if joint else _n_batches(n_r, batch_size, single["single_retain"])
    if steps_per_epoch == 0:
        raise UnlearnflowError(f"no training step: {n_f} forget and {n_r} retain pairs in batches of {batch_size}")
    total = epochs * steps_per_epoch
    if max_steps is not None:
        total = min(total, int(max_steps))
    cycler = _Cycler(n_r, batch_size, gen) if joint else None

    saved_flags = {n: p.requires_grad for n, p in params.items()}
    for n, p in params.items():
        p.requires_grad_(n in trainable)
        p.grad = None
    decay = [p for n, p in trainable.items() if decays(n, p)]
    no_decay = [p for n, p in trainable.items() if not decays(n, p)]
    groups = [{"params": decay, "weight_decay": float(weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=float(lr))
    else:
        opt = torch.optim.SGD(groups, lr=float(lr), momentum=0.9)
    # SalUn: grad <- grad * mask, then non-salient weights and their state restored
    update = MaskedUpdate(trainable, salient, restore=restore_masked)
    losses = {"forget": [], "retain": []}  # this epoch's

    def loss_of(batch) -> torch.Tensor:  # batch: (forget indices, retain indices), None = none
        images, tokens, sizes = [], [], []
        for s, idxs in zip((forget, retain), batch):
            if idxs is not None:
                images.append(s[0][idxs])
                tokens.append(s[1][idxs])
                sizes.append(len(idxs))
            else:
                sizes.append(0)
        # one forward for both batches (CLIP has no batch-dependent layer)
        x = normalise(torch.cat(images).to(device, non_blocking=True))
        t = torch.cat(tokens).to(device, non_blocking=True)
        img_f, txt_f = model.encode_image(x), model.encode_text(t)
        nf = sizes[0]
        loss = img_f.new_zeros(())
        if nf:
            lf = set_loss(forget_loss, img_f[:nf], txt_f[:nf], model.logit_scale)
            loss = loss - fw * lf  # the minus: ascent on the forget loss
            losses["forget"].append(lf.item())
        if sizes[1]:
            lr_loss = set_loss(retain_loss, img_f[nf:], txt_f[nf:], model.logit_scale)
            loss = loss + rw * lr_loss
            losses["retain"].append(lr_loss.item())
        return loss

    def lr_of(s: int) -> float:
        return lr_at(s, lr=float(lr), total=total, schedule=schedule, warmup_steps=int(warmup_steps))

    rows = []
    step = 0
    model.train()  # open_clip's CLIP has no dropout by default: same network as eval
    try:
        for epoch in range(epochs):
            if step >= total:
                break
            plan = epoch_plan(passes, n_f, n_r, batch_size, gen, cycler, **single)
            assert len(plan) == steps_per_epoch, (len(plan), steps_per_epoch)
            f_losses, r_losses = [], []
            losses.update(forget=f_losses, retain=r_losses)
            # the plan has no contrastive batch of one pair
            step = train_steps(opt, plan, loss_of, lr=lr_of, grad_hook=update.mask_grads,
                               after_step=lambda: update.restore(opt), step=step, stop=total)  # fmt: skip
            cur_lr = lr_of(step - 1)  # the epoch's last (it ran at least one step)
            row = {
                "epoch": epoch,
                "steps": step,
                "forget_loss": sum(f_losses) / len(f_losses) if f_losses else float("nan"),
                "retain_loss": sum(r_losses) / len(r_losses) if r_losses else float("nan"),
                "lr": cur_lr,
                "seconds": time.perf_counter() - t_start,
            }
            rows.append(row)
            log.info(
                "epoch %d: %d steps, forget loss %.4f, retain loss %.4f, lr %.3g",
                epoch, step, row["forget_loss"], row["retain_loss"], cur_lr,
            )  # fmt: skip
    finally:
        model.eval()
        for n, p in params.items():
            p.grad = None
            p.requires_grad_(saved_flags[n])
    return {
        "trace": rows,
        "steps": step,
        "seconds": time.perf_counter() - t_start,
        "trainable_tensors": len(trainable),
        "masked_tensors": len(update),
    }


# ------------------------------------------------- the method interface
def _num(x):
    """A finite float, or None (JSON has no NaN)."""
    return float(x) if x is not None and math.isfinite(x) else None


def merge_params(method: str, defaults: dict, params: dict) -> dict:
    """DEFAULTS overridden by ``params``; unknown keys are errors naming the method."""
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise UnlearnflowError(f"{method}: unknown params {unknown}; known: {sorted(defaults)}")
    return {**defaults, **params}


def run_finetune(ctx, params: dict, *, method: str, defaults: dict, mask: dict | None = None, info: dict | None = None):
    """Run one fine-tuning method from the base model; returns a MethodResult."""
    from . import MethodResult

    p = merge_params(method, defaults, params)
    model = ctx.bundle.model
    theta0 = snapshot(model)
    out = finetune(
        ctx.bundle,
        ctx.forget_tar,
        ctx.retain_tar,
        mask=mask,
        seed=ctx.seed,
        **{k: p[k] for k in FINETUNE_KEYS},
    )
    tensors = changed_tensors(model, theta0)
    trace = pd.DataFrame(out["trace"])
    last = out["trace"][-1] if out["trace"] else {}
    result_info = {
        "params": p,
        "steps": out["steps"],
        "train_seconds": out["seconds"],
        "trainable_tensors": out["trainable_tensors"],
        "n_changed_tensors": len(tensors),
        "final_forget_loss": _num(last.get("forget_loss")),
        "final_retain_loss": _num(last.get("retain_loss")),
        "sign": SIGN,
        "frozen": list(FROZEN),
        **(info or {}),
    }
    if not tensors:
        log.warning("%s: no parameter changed", method)
    return MethodResult(tensors=tensors, trace=trace, info=result_info)


def finetune_method(method: str, defaults: dict):
    """The ``run`` of a fine-tuning method module (ft, ga, ga_ft: one module
    per method, differing only in their DEFAULTS' loss weights)."""

    def run(ctx, params: dict):
        """The method interface (see unlearnflow.methods)."""
        return run_finetune(ctx, params, method=method, defaults=defaults)

    return run


__all__ = [
    "finetune",
    "finetune_method",
    "changed_tensors",
    "snapshot",
    "load_set",
    "lr_at",
    "decays",
    "merge_params",
    "run_finetune",
    "SIGN",
]
