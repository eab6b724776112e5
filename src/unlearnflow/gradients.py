"""Per-parameter forget and retain gradients: one pass over a set, no updates.

For a set of image-caption pairs and a loss, the stored gradient of each
named parameter is the mean over batches of the per-batch mean-loss
gradient (the reference's convention), accumulated in fp32. The sign is
+grad L: unlearning methods that *ascend* the forget loss add it
(theta + lambda * g), and say so themselves.

Losses:
- ``cosine`` (the forget default): mean over pairs of 1 - cos(image, own caption);
- ``contrastive`` (the retain default): CLIP's InfoNCE with the model's logit scale.

The accumulation costs nothing beyond a bare forward+backward loop: autograd
already sums into ``.grad`` across batches when it is not zeroed, and we
divide once at the end.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from .io import UnlearnflowError, load_tensors, save_tensors
from .models.clip import ClipBundle, iter_pairs, load_clip, normalise, resolve_device

log = logging.getLogger(__name__)

FORMAT = "unlearnflow.gradients/1"
SIGN = "+grad: d(mean loss)/d(theta); ascent on this loss is theta + lambda * g"
LOSSES = ("cosine", "contrastive")


def set_loss(kind: str, image_features, text_features, logit_scale) -> torch.Tensor:
    """The loss of a batch of pairs (features not yet normalised)."""
    img = torch.nn.functional.normalize(image_features.float(), dim=-1)
    txt = torch.nn.functional.normalize(text_features.float(), dim=-1)
    if kind == "cosine":
        return (1.0 - (img * txt).sum(-1)).mean()
    if kind == "contrastive":
        logits = logit_scale.exp().float() * img @ txt.t()
        labels = torch.arange(len(img), device=img.device)
        return 0.5 * (
            torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.t(), labels)
        )
    raise UnlearnflowError(f"unknown loss {kind!r}; known: {LOSSES}")


def iter_batches(tar, bundle: ClipBundle, batch_size: int):
    """(images, tokens) batches streamed from a webdataset tar."""
    for images, captions in iter_pairs(tar, _image_size(bundle), batch_size):
        yield images, bundle.tokenizer(captions)


def _image_size(bundle: ClipBundle) -> int:
    size = bundle.model.visual.image_size
    return size[0] if isinstance(size, (tuple, list)) else int(size)


def accumulate_gradients(
    bundle: ClipBundle,
    batches,
    loss: str,
    *,
    amp: bool = False,
    names: set[str] | None = None,
    progress: bool = True,
    total: int | None = None,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Mean over batches of the per-batch gradient of ``loss``; no updates.

    ``names`` restricts which parameters keep gradients (the others are
    frozen for the pass), for models too big to store whole gradient files.
    """
    from tqdm import tqdm

    model = bundle.model
    device = bundle.device
    model.eval()  # no dropout; the same network every later stage sees
    params = dict(model.named_parameters())
    keep = set(params) if names is None else set(names)
    unknown = keep - set(params)
    if unknown:
        raise UnlearnflowError(f"unknown parameters {sorted(unknown)[:5]}")
    saved_flags = {n: p.requires_grad for n, p in params.items()}
    for n, p in params.items():
        p.requires_grad_(n in keep)
        p.grad = None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if amp else nullcontext()
    n_batches = n_samples = 0
    loss_sum = 0.0
    try:
        bar = tqdm(batches, total=total, desc=f"gradients ({loss})", disable=not progress, mininterval=5)
        for images, tokens in bar:
            if loss == "contrastive" and len(images) < 2:
                continue  # InfoNCE of one pair is 0: it would only dilute the mean
            x = normalise(images.to(device, non_blocking=True))
            with autocast:
                img_f = model.encode_image(x)
                txt_f = model.encode_text(tokens.to(device, non_blocking=True))
            value = set_loss(loss, img_f, txt_f, model.logit_scale)
            value.backward()  # sums into .grad across batches
            n_batches += 1
            n_samples += len(images)
            loss_sum += value.item()
        if n_batches == 0:
            raise UnlearnflowError("empty set: no batch to compute a gradient on")
        grads = {}
        for n in sorted(keep):
            g = params[n].grad
            grads[n] = (
                torch.zeros_like(params[n], dtype=torch.float32, device="cpu")
                if g is None
                else (g.float() / n_batches).to("cpu")
            )
    finally:
        for n, p in params.items():
            p.grad = None
            p.requires_grad_(saved_flags[n])
    stats = {"batches": n_batches, "samples": n_samples, "mean_loss": loss_sum / n_batches}
    return grads, stats


def check_nonzero(grads: dict[str, torch.Tensor], where: str) -> float:
    total = float(sum(float(g.double().pow(2).sum()) for g in grads.values()) ** 0.5)
    if not total > 0 or total != total:
        raise UnlearnflowError(f"{where}: the gradient is all zero (or NaN): nothing would be unlearned")
    return total


def save_gradients(path, grads: dict[str, torch.Tensor], metadata: dict) -> None:
    save_tensors(path, grads, metadata)


def load_gradients(path) -> tuple[dict[str, torch.Tensor], dict]:
    return load_tensors(path, FORMAT, what="an unlearnflow gradient")


def compute_set_gradients(
    model_dir,
    tar,
    out_path,
    *,
    which: str,
    loss: str,
    batch_size: int,
    device: str = "auto",
    amp: bool = False,
    threads: int | None = None,
) -> dict:
    """The gradient stage for one set (forget or retain)."""
    if threads:
        torch.set_num_threads(int(threads))
    if loss not in LOSSES:
        raise UnlearnflowError(f"{which} loss {loss!r} unknown; known: {LOSSES}")
    bundle = load_clip(model_dir, device=resolve_device(device))
    t0 = time.time()
    try:
        grads, stats = accumulate_gradients(bundle, iter_batches(tar, bundle, batch_size), loss, amp=amp)
    except UnlearnflowError as exc:
        raise UnlearnflowError(f"{tar}: {exc}") from exc
    norm = check_nonzero(grads, str(tar))
    meta = {
        "format": FORMAT,
        "set": which,
        "loss": loss,
        "sign": SIGN,
        "samples": stats["samples"],
        "batches": stats["batches"],
        "batch_size": batch_size,
        "mean_loss": f"{stats['mean_loss']:.6f}",
        "grad_norm": f"{norm:.6g}",
        "model_fingerprint": bundle.info.get("fingerprint", ""),
        "source": str(tar),
        "amp": amp,
        "seconds": f"{time.time() - t0:.2f}",
        "device": str(bundle.device),
    }
    save_gradients(out_path, grads, meta)
    return meta


def gradients_stage(inp: dict, out: dict, params: dict) -> None:
    meta = compute_set_gradients(
        Path(inp["config"]).parent,
        inp["tar"],
        out["grads"],
        which=params["set"],
        loss=params["loss"],
        batch_size=int(params["batch_size"]),
        device=params.get("device", "auto"),
        amp=bool(params.get("amp", False)),
        threads=params.get("threads"),
    )
    print({k: meta[k] for k in ("set", "loss", "samples", "batches", "mean_loss", "grad_norm", "seconds")})
