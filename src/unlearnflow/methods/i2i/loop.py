"""The loop shared by the image-to-image unlearning methods, and their losses.

Li, Hsu, Chen, Marculescu (ICLR 2024, arXiv 2402.00351) fine-tune a copy of
the model (the student) against a frozen copy of the original (the teacher,
E0 / D0). Every step takes one forget batch x_f and one retain batch x_r;
each sample gets one task's mask T, drawn uniformly among the configured
tasks, and student and teacher always see the *same* mask. A method is an
``objective(step) -> (loss, {"retain_loss": L_R, "forget_loss": L_F})``
plus which part of the model it trains (``encoder``: the decoder never
changes, bit for bit; ``full``: encoder and decoder). Everything else is
here: optimiser, schedule, clipping, the trace, the changed tensors.

Epochs. An epoch is one pass over the forget set (shuffled); the retain
set is cycled (and reshuffled) as often as needed. Both are in memory.

Optimiser (the paper's MAGE training, scaled): AdamW with betas
(0.9, 0.95), linear warm-up then cosine decay, gradient-norm clipping.
The paper: 6 epochs, lr 1e-4 x batch / 256, wd 0.05, clip 3, batch 256 on
ViT-B; DEFAULTS are for the tiny default model (0.41 M parameters): 6 epochs at
lr 1e-3, batch 32, with the paper's loss weights.

Loss weights. ``retain_alpha * L_R + forget_alpha * L_F`` (the reference's
README example: 1 and 0.2). ``forget_alpha`` 0 is an error: the reference
CLI defaults it to 0, which silently disables forgetting.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass

import pandas as pd
import torch

from ... import method_table
from ...io import UnlearnflowError
from ...training import lr_at, train_steps
from ...models.i2i import I2IModel, Task, latent_mse, random_masks, to_float

log = logging.getLogger(__name__)

PAPER = {
    "epochs": 6,
    "batch_size": 256,
    "lr": 1e-4,  # x batch / 256
    "weight_decay": 0.05,
    "betas": [0.9, 0.95],
    "grad_clip": 3.0,
    "warmup_epochs": 1,
    "schedule": "cosine",
    "retain_alpha": 1.0,
    "forget_alpha": 0.2,
}
DEFAULTS = dict(method_table.I2I_LOOP)  # the one source: unlearnflow.method_table
NOISE_KINDS = ("gaussian", "uniform", "constant")
TRAINABLE = ("encoder", "full")


# ------------------------------------------------------------------ losses
def noise_images(x: torch.Tensor, kind: str = "gaussian", generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise images n for a batch x in [0, 1], as the reference code draws them.

    gaussian: clamp(randn * std(x) + mean(x), 0, 1), scalar batch mean and std;
    uniform: U(0, 1); constant: every pixel the batch mean.
    """
    # drawn on the CPU (where the loop's generator lives), then moved
    if kind == "gaussian":
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        return (z * x.std() + x.mean()).clamp(0, 1)
    if kind == "uniform":
        return torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    if kind == "constant":
        return torch.full_like(x, float(x.mean()))
    raise UnlearnflowError(f"noise {kind!r} unknown; known: {NOISE_KINDS}")


def gaussian_like(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian noise with the scalar mean and std of ``z`` (RANDOM ENCODER's target)."""
    n = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
    return n * z.std() + z.mean()


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.mean((a - b) ** 2)


def li_loss(z_f, z_noise0, z_r, z_r0, retain_alpha: float, forget_alpha: float):
    """retain_alpha * ||E(T(x_r)) - E0(T(x_r))||^2 + forget_alpha * ||E(T(x_f)) - E0(T(n))||^2
    (element means). Returns (loss, L_R, L_F)."""
    l_r = latent_mse(z_r, z_r0)
    l_f = latent_mse(z_f, z_noise0)
    return retain_alpha * l_r + forget_alpha * l_f, l_r, l_f


# ------------------------------------------------------------------ context
@dataclass
class I2IContext:
    """What an image-to-image method gets: the base model and the sets."""

    model: I2IModel  # the base model (never modified: methods train a copy)
    forget: torch.Tensor  # uint8 (N, 3, S, S)
    retain: torch.Tensor  # uint8 (M, 3, S, S): the retain set or the proxy pool
    tasks: list[Task]
    seed: int = 0
    retain_set: str = "retain"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


@dataclass
class Step:
    """One step's batches and models, handed to a method's objective."""

    student: I2IModel
    teacher: I2IModel
    x_f: torch.Tensor  # float [0, 1]
    m_f: torch.Tensor  # (B, 1, S, S), 1 = hidden
    x_r: torch.Tensor
    m_r: torch.Tensor
    params: dict
    generator: torch.Generator


def check_params(params: dict, defaults: dict, method: str) -> dict:
    p = {**defaults, **(params or {})}
    unknown = sorted(set(p) - set(defaults) - {"train"})
    if unknown:
        raise UnlearnflowError(f"{method}: unknown params {unknown}; known: {sorted(defaults)}")
    if float(p["forget_alpha"]) == 0:
        raise UnlearnflowError(
            f"{method}: forget_alpha is 0, which disables forgetting (the loss would only keep the "
            f"retain set); set i2i.methods.{method}.forget_alpha > 0 (the paper's example: 0.2)"
        )
    if float(p["forget_alpha"]) < 0 or float(p["retain_alpha"]) < 0:
        raise UnlearnflowError(f"{method}: retain_alpha and forget_alpha must be >= 0 (got {p['retain_alpha']}, {p['forget_alpha']})")
    if p["noise"] not in NOISE_KINDS:
        raise UnlearnflowError(f"{method}: noise {p['noise']!r} unknown; known: {NOISE_KINDS}")
    if p.get("train", "encoder") not in TRAINABLE:
        raise UnlearnflowError(f"{method}: train {p['train']!r} unknown; known: {TRAINABLE}")
    if int(p["batch_size"]) < 2:
        raise UnlearnflowError(f"{method}: batch_size {p['batch_size']} < 2 (the noise needs a batch std)")
    return p


def trainable_names(model: I2IModel, train: str) -> list[str]:
    parts = ("encoder",) if train == "encoder" else ("encoder", "decoder")
    return [n for n, _ in model.named_parameters() if model.part_of(n) in parts]


def unlearn(ctx: I2IContext, params: dict, *, method: str, defaults: dict, objective, train: str):
    """Fine-tune a copy of ``ctx.model`` on ``objective``; returns a MethodResult
    with the tensors that changed (a subset of the trained part)."""
    from .. import MethodResult

    p = check_params(params, defaults, method)
    train = p.get("train", train)
    if len(ctx.forget) == 0 or len(ctx.retain) == 0:
        raise UnlearnflowError(f"{method}: empty forget ({len(ctx.forget)}) or retain ({len(ctx.retain)}) set")
    dev = ctx.device
    gen = torch.Generator().manual_seed(int(ctx.seed))
    torch.manual_seed(int(ctx.seed))
    teacher = ctx.model.eval()
    for q in teacher.parameters():
        q.requires_grad_(False)
    student = copy.deepcopy(teacher).train()
    names = set(trainable_names(student, train))
    if not names:
        raise UnlearnflowError(f"{method}: the {student.adapter} model has no {train} parameters")
    trained = []
    for n, q in student.named_parameters():
        q.requires_grad_(n in names)
        if n in names:
            trained.append(q)
    opt = torch.optim.AdamW(trained, lr=float(p["lr"]), betas=tuple(p["betas"]), weight_decay=float(p["weight_decay"]))
    bs = int(p["batch_size"])
    nf, nr = len(ctx.forget), len(ctx.retain)
    steps_per_epoch = max(1, math.ceil(nf / bs))
    total = int(p["epochs"]) * steps_per_epoch
    if p.get("max_steps"):
        total = min(total, int(p["max_steps"]))
    size = student.image_size
    rows, t0, terms = [], time.time(), {}

    def batches():
        """Steps of an endless run of epochs: each forget batch (shuffled) with
        the next retain batch (the retain set cycled, reshuffled)."""
        r_order, r_pos = torch.randperm(nr, generator=gen), 0
        while True:
            f_order = torch.randperm(nf, generator=gen)
            for b in range(steps_per_epoch):
                fi = f_order[b * bs : (b + 1) * bs]
                if len(fi) < 2:  # a last batch of one has no std
                    continue
                if r_pos + bs > nr:
                    r_order, r_pos = torch.randperm(nr, generator=gen), 0
                ri = r_order[r_pos : r_pos + bs]
                r_pos += bs
                x_f = to_float(ctx.forget[fi]).to(dev)
                x_r = to_float(ctx.retain[ri]).to(dev)
                yield Step(
                    student,
                    teacher,
                    x_f,
                    random_masks(ctx.tasks, len(x_f), size, gen, dev),
                    x_r,
                    random_masks(ctx.tasks, len(x_r), size, gen, dev),
                    p,
                    gen,
                )

    def loss_of(s: Step) -> torch.Tensor:
        loss, terms["step"] = objective(s)
        if not torch.isfinite(loss):
            raise UnlearnflowError(f"{method}: the loss is {loss.item()} at step {len(rows)}; lower lr or forget_alpha")
        return loss

    def record(step, loss, lr, gnorm) -> None:
        t = terms["step"]
        rows.append(
            {
                "step": step,
                "lr": lr,
                "loss": loss.item(),
                "retain_loss": float(t["retain_loss"]),
                "forget_loss": float(t["forget_loss"]),
                "grad_norm": float(gnorm),
            }
        )
        if step % 20 == 0:
            log.info("%s step %d/%d loss %.5f (retain %.5f, forget %.5f)", method, step, total, *[rows[-1][k] for k in ("loss", "retain_loss", "forget_loss")])

    step = train_steps(
        opt, batches(), loss_of, stop=total, on_step=record,
        lr=lambda k: lr_at(k, lr=float(p["lr"]), total=total, warmup_steps=int(p["warmup_steps"])),
        grad_hook=lambda: torch.nn.utils.clip_grad_norm_(trained, float(p["grad_clip"])),
    )  # fmt: skip
    base = dict(teacher.named_parameters())
    changed = {n: q.detach().cpu().clone() for n, q in student.named_parameters() if n in names and not torch.equal(q, base[n])}
    parts = sorted({student.part_of(n) for n in changed})
    trace = pd.DataFrame(rows)
    info = {
        "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in p.items()},
        "trained_part": train,
        "changed_parts": parts,
        "steps": step,
        "train_seconds": round(time.time() - t0, 2),
        "retain_set": ctx.retain_set,
        "forget_images": nf,
        "retain_images": nr,
        "tasks": [t.name for t in ctx.tasks],
    }
    if rows:
        last = trace.tail(max(1, steps_per_epoch))
        info["final_retain_loss"] = float(last["retain_loss"].mean())
        info["final_forget_loss"] = float(last["forget_loss"].mean())
    return MethodResult(tensors=changed, trace=trace, info=info)
