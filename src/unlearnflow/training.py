"""The training machinery every trainer shares.

- :func:`lr_at`: the learning-rate schedule (linear warm-up, then constant
  or cosine decay to 0);
- :func:`train_steps`: the step loop (batch -> loss -> backward -> gradient
  hook -> optimizer step -> after-step hook -> trace), used by the CLIP
  fine-tuning baselines, text-to-image SalUn, the image-to-image methods,
  the attacks (soft prompt, prompt search, relearning), the judge and the
  three pretraining loops (:class:`LossBar`: their progress bar and record);
- :func:`relearn_curve`: the relearning attacks' loop (CLIP and
  text-to-image: train, evaluating at some steps);
- :func:`replace_parameters`: a delta's tensors into a model;
- :class:`MaskedUpdate`: SalUn's masked update (CLIP and text-to-image);
- :func:`step_size_search`: SLUG's grow/bisect probe loop (CLIP and the
  diffusion text encoder).

Every caller gets the floating-point operations and random draws it had
before, in the same order: a run is bit-identical to the copies these
replaced.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Iterable

import numpy as np
import torch

from .io import UnlearnflowError

SCHEDULES = ("cosine", "constant")
# optimizer state that SalUn zeroes at non-salient elements (AdamW, Adam, SGD)
OPT_STATE = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer")


# -------------------------------------------------------------- schedule
def lr_at(step: int, *, lr: float, total: int, schedule: str = "cosine", warmup_steps: int = 0, angle_first: bool = False) -> float:
    """The learning rate of step ``step`` (0-based) of ``total``: linear
    warm-up ``lr * (step + 1) / warmup_steps`` over the first ``warmup_steps``,
    then ``constant`` lr or ``cosine`` decay ``lr * (1 + cos(pi * t)) / 2``,
    t going from 0 at the end of the warm-up to 1 at ``total``.

    ``angle_first``: the angle as ``pi * elapsed / span`` instead of
    ``pi * (elapsed / span)``. The two round differently in the last bit; the
    text-to-image and image-to-image pretraining loops were written the
    first way, and keep it so that their models stay bit-identical.
    ``lr=1.0`` gives the bare factor, exactly.
    """
    if schedule not in SCHEDULES:
        raise UnlearnflowError(f"schedule {schedule!r} unknown; known: {SCHEDULES}")
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    span = max(1, total - warmup_steps)
    if angle_first:
        angle = math.pi * min(step - warmup_steps, total - warmup_steps) / span
    else:
        angle = math.pi * min(1.0, (step - warmup_steps) / span)
    return lr * 0.5 * (1 + math.cos(angle))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def replace_parameters(model: torch.nn.Module, tensors: dict, source="delta") -> list[str]:
    """Copy ``tensors`` (name -> tensor) into the model's named parameters, in
    their dtype (a delta's tensors, say); ``source`` names them in errors.
    Returns the names replaced."""
    params = dict(model.named_parameters())
    unknown = [n for n in tensors if n not in params]
    if unknown:
        raise UnlearnflowError(f"{source}: unknown parameters {unknown[:5]}")
    with torch.no_grad():
        for name, t in tensors.items():
            p = params[name]
            if p.shape != t.shape:
                raise UnlearnflowError(f"delta {name}: shape {tuple(t.shape)} != model's {tuple(p.shape)}")
            p.copy_(t.to(p.dtype))
    return list(tensors)


# ------------------------------------------------------------------ loop
_END = object()


def train_steps(
    opt: torch.optim.Optimizer,
    batches: Iterable,
    loss_fn: Callable,
    *,
    lr: Callable[[int], float] | None = None,
    grad_hook: Callable[[], object] | None = None,
    after_step: Callable[[], None] | None = None,
    on_step: Callable | None = None,
    step: int = 0,
    stop: int | None = None,
) -> int:
    """Train on ``batches`` until they run out (or ``stop`` steps are done);
    returns the step count after the last step (``step`` counts on from
    its start value). Each step:

    1. the next batch (a generator drawing its random numbers draws them here,
       before the forward pass, and is not asked for a batch past ``stop``);
    2. the learning rate ``lr(step)`` into every parameter group (none: the
       optimizer's own, or its scheduler's via ``after_step``);
    3. ``loss = loss_fn(batch)``, zero the gradients (to None), backward;
    4. ``grad_hook()`` (SalUn's mask, gradient clipping; its value goes to
       ``on_step``), ``opt.step()``, ``after_step()`` (SalUn's restore, a
       clamp, a scheduler);
    5. ``on_step(step, loss, lr, hooked)``: the trace.
    """
    it = iter(batches)
    while stop is None or step < stop:
        batch = next(it, _END)
        if batch is _END:
            break
        cur = None
        if lr is not None:
            cur = lr(step)
            set_lr(opt, cur)
        loss = loss_fn(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        hooked = grad_hook() if grad_hook is not None else None
        opt.step()
        if after_step is not None:
            after_step()
        if on_step is not None:
            on_step(step, loss, cur, hooked)
        step += 1
    return step


class LossBar:
    """A pretraining loop's trace (its ``on_step``): every step's loss in
    ``losses``, and a tqdm bar showing the mean of the last ``every``;
    :meth:`summary` ends the loop's record."""

    def __init__(self, total: int, desc: str, every: int = 50, digits: int = 4):
        from tqdm import tqdm

        self.start = time.time()
        self.losses: list[float] = []
        self.every, self.digits = int(every), int(digits)
        self.bar = tqdm(total=total, desc=desc, mininterval=5)

    def __call__(self, _step=None, loss=None, _lr=None, _hooked=None) -> None:
        self.losses.append(loss.item())
        self.bar.update(1)
        if len(self.losses) % self.every == 0:
            self.bar.set_postfix(loss=f"{np.mean(self.losses[-self.every :]):.{self.digits}f}")

    def close(self) -> None:
        self.bar.close()

    def summary(self, device, last: int = 20) -> dict:
        """The mean loss of the last ``last`` steps, the seconds since the start, the device."""
        return {"final_loss": float(np.mean(self.losses[-last:])), "seconds": round(time.time() - self.start, 1), "device": str(device)}


def relearn_curve(module: torch.nn.Module, opt, steps: int, marks, evaluate: Callable[[int], dict], loss_fn: Callable[[], torch.Tensor]) -> list[dict]:
    """The relearning attack: ``steps`` steps on ``loss_fn()`` (``module`` in
    train mode), ``evaluate(step)`` (in eval mode) before each step in
    ``marks``, and after the last step when ``steps`` is among them;
    ``module`` ends in eval mode. Returns the evaluations in order."""
    curve = []

    def measure(step: int) -> None:
        if step in marks:
            module.eval()
            curve.append(evaluate(step))

    def loss_at(step: int) -> torch.Tensor:
        measure(step)
        module.train()
        return loss_fn()

    train_steps(opt, range(steps), loss_at)
    measure(steps)
    module.eval()
    return curve


# ---------------------------------------------------- SalUn's update
class MaskedUpdate:
    """SalUn's update (Fan et al., ICLR 2024): only salient weights move.

    ``params`` / ``masks``: name -> parameter / bool mask (True = salient) of
    the parameters that train; a name with no mask trains unmasked, and so
    does an all-True mask (``grad * 1`` and ``where(True, p, theta0)`` are
    exact no-ops, so skipping it changes nothing but the memory). Use
    :meth:`mask_grads` as the step's gradient hook (``grad <- grad * mask``,
    after backward) and :meth:`restore` after ``opt.step()``.

    ``restore``: copy the non-salient elements back from theta(0) after
    every step. Masking the gradient alone (SalUn's original code) leaves
    weight decay free to move them: AdamW's decoupled decay scales every
    weight of its group, SGD's coupled decay feeds the momentum.
    ``False`` is the ablation that shows it (``finetune(restore_masked=False)``).

    ``zero_state``: also zero the optimizer state (``OPT_STATE``) at
    non-salient elements, as the CLIP baselines do. It never changes a
    weight (the optimizers are elementwise and the weights are restored),
    only the state: SGD's coupled decay leaves non-zero momentum there, and
    a non-finite gradient NaN * 0 = NaN would stay in Adam's moments.
    Text-to-image SalUn (Adam, no weight decay: a zero gradient is a zero
    update, as the reference's ``random_label.py``) does not.

    ``theta0``: name -> the starting values, when the caller holds them
    already (else cloned here, for the masked tensors only).
    """

    def __init__(self, params: dict, masks: dict, *, restore: bool = True, zero_state: bool = True, theta0: dict | None = None):
        self.do_restore, self.zero_state = bool(restore), bool(zero_state)
        self.masked = []  # (param, salient, non-salient or None, theta0)
        for n, p in params.items():
            m = masks.get(n)
            if m is None or bool(m.all()):
                continue
            start = theta0[n] if theta0 is not None else p.detach().clone()
            self.masked.append((p, m, ~m if self.zero_state else None, start))

    def __len__(self) -> int:
        return len(self.masked)

    @torch.no_grad()
    def mask_grads(self) -> None:
        for p, m, _, _ in self.masked:
            if p.grad is not None:
                p.grad.mul_(m)  # grad <- grad * mask

    @torch.no_grad()
    def restore(self, opt: torch.optim.Optimizer) -> None:
        """Non-salient elements back to theta(0) (and their optimizer state to 0)."""
        if not self.do_restore:
            return
        for p, m, off, theta0 in self.masked:
            p.copy_(torch.where(m, p, theta0))
            if off is None:
                continue
            state = opt.state.get(p, {})
            for key in OPT_STATE:
                buf = state.get(key)
                if isinstance(buf, torch.Tensor) and buf.shape == p.shape:
                    buf.masked_fill_(off, 0)


# ------------------------------------------------- SLUG's step search
def step_size_search(state, probe: Callable, *, max_probes: int, tol: float, gnorm: float, tnorm: float,
                     head: dict | None = None, metrics: Callable[[dict], dict] = dict) -> list[dict]:  # fmt: skip
    """SLUG's probe loop from a bracket ``state`` (``methods.slug.SearchState``:
    grow x2 until a probe forgets, then bisect): at most ``max_probes``
    probes, stopping once the bracket is within ``tol``; ``state.best`` ends
    as the smallest lambda that forgot within budget, with its metrics.
    ``probe(lam) -> (metrics, forgets, within_budget)`` evaluates the edit
    of step ``lam``; ``gnorm`` / ``tnorm``: the gradient's and the layer's
    norms (the rows' ``step_norm_ratio``). Returns one trace row per probe:
    ``head``, the probe's bookkeeping, then ``metrics(metrics)``."""
    rows = []
    for k in range(int(max_probes)):
        t0 = time.perf_counter()
        lam = state.lam
        m, forgets, ok = probe(lam)
        rows.append({**(head or {}), "probe": k, "lam": lam, "step_norm_ratio": lam * gnorm / tnorm, "forgets": forgets,
                     "within_budget": ok, "seconds": time.perf_counter() - t0, **metrics(m)})  # fmt: skip
        if forgets and ok and (state.best is None or lam < state.best[0]):
            state.best = (lam, m)
        state.next(forgets)
        if state.converged(tol):
            break
    return rows


__all__ = ["lr_at", "set_lr", "replace_parameters", "train_steps", "LossBar", "relearn_curve", "MaskedUpdate", "step_size_search", "SCHEDULES", "OPT_STATE"]
