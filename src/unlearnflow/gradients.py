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
already sums into ``.grad`` across batches when it is not zeroed, the loss
is summed on the device (no host sync per batch), and the sums are divided
in place once at the end (no second copy of the gradients).

What is kept (``keep``):
- ``all`` (the default): one tensor per parameter; SalUn's global saliency
  mask needs every one;
- ``candidates``: only the parameters SLUG's layer analysis could choose
  (:func:`unlearnflow.layers.is_candidate` with the same filter as the
  ``layers`` config), for models whose full gradient files would not fit.
  The other parameters are frozen for the pass, so their gradients are
  never computed; the candidates' gradients are bit-identical to those of
  ``all``. Such files say ``keep = candidates`` (and the filter) in their
  metadata, and the masks stage refuses them.
Every file carries a small statistics table in its metadata: ``norms``, the
Frobenius norm of each stored gradient (JSON).
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext

import torch

from .io import UnlearnflowError, load_tensors, save_tensors
from .models.clip import ClipBundle, iter_pairs, load_clip, normalise, resolve_device

log = logging.getLogger(__name__)

FORMAT = "unlearnflow.gradients/1"
SIGN = "+grad: d(mean loss)/d(theta); ascent on this loss is theta + lambda * g"
LOSSES = ("cosine", "contrastive")
KEEP = ("all", "candidates")


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
    # float64 where the device has it (MPS has not)
    loss_sum = torch.zeros((), dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)
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
            loss_sum += value.detach()  # on the device: no sync per batch
        if n_batches == 0:
            raise UnlearnflowError("empty set: no batch to compute a gradient on")
        grads = {}
        for n in sorted(keep):
            g = params[n].grad
            if g is None:
                grads[n] = torch.zeros_like(params[n], dtype=torch.float32, device="cpu")
            elif g.dtype == torch.float32 and g.device.type == "cpu":
                grads[n] = g.div_(n_batches)  # the sum's own storage: p.grad is dropped below
            else:
                grads[n] = (g.float() / n_batches).to("cpu")
    finally:
        for n, p in params.items():
            p.grad = None
            p.requires_grad_(saved_flags[n])
    stats = {"batches": n_batches, "samples": n_samples, "mean_loss": float(loss_sum) / n_batches}
    return grads, stats


def candidate_names(model, candidate_filter: dict | None = None) -> set[str]:
    """The parameters SLUG's layer analysis could choose, by name and ndim.

    ``candidate_filter`` holds the ``layers`` config keys that decide it
    (``exclude``, ``include_layernorm``, ``matrices_only``); absent keys take
    :func:`unlearnflow.layers.analyse`'s defaults.
    """
    from .layers import DEFAULT_EXCLUDE, is_candidate

    f = dict(candidate_filter or {})
    exclude = f.get("exclude")
    exclude = DEFAULT_EXCLUDE if exclude is None else tuple([exclude] if isinstance(exclude, str) else exclude)
    return {
        n
        for n, p in model.named_parameters()
        if is_candidate(
            n,
            exclude,
            bool(f.get("include_layernorm", True)),
            ndim=p.ndim,
            matrices_only=bool(f.get("matrices_only", False)),
        )
    }


_NORM_CHUNK = 1 << 22  # elements: a float64 copy of one chunk is 32 MiB


def tensor_norm(g: torch.Tensor) -> float:
    """Frobenius norm in float64, chunk by chunk (no float64 copy of a whole
    tensor; ViT-H-14's token embedding has 50M elements)."""
    flat = g.detach().reshape(-1)
    total = 0.0
    for s in range(0, flat.numel(), _NORM_CHUNK):
        total += float(torch.linalg.vector_norm(flat[s : s + _NORM_CHUNK], dtype=torch.float64)) ** 2
    return math.sqrt(total)


def gradient_norms(grads: dict[str, torch.Tensor]) -> dict[str, float]:
    """Frobenius norm of each gradient (float64)."""
    return {n: tensor_norm(g) for n, g in grads.items()}


def check_nonzero(grads: dict[str, torch.Tensor], where: str) -> float:
    total = float(sum(float(g.double().pow(2).sum()) for g in grads.values()) ** 0.5)
    if not total > 0 or total != total:
        raise UnlearnflowError(f"{where}: the gradient is all zero (or NaN): nothing would be unlearned")
    return total


def save_gradients(path, grads: dict[str, torch.Tensor], metadata: dict) -> None:
    save_tensors(path, grads, metadata)


def load_gradients(path) -> tuple[dict[str, torch.Tensor], dict]:
    return load_tensors(path, FORMAT, what="an unlearnflow gradient")


def set_gradients(
    bundle: ClipBundle,
    tar,
    out_path,
    *,
    which: str,
    loss: str,
    batch_size: int,
    amp: bool = False,
    keep: str = "all",
    candidate_filter: dict | None = None,
) -> dict:
    """The gradient stage for one set on a loaded model: tar in, file out."""
    if loss not in LOSSES:
        raise UnlearnflowError(f"{which} loss {loss!r} unknown; known: {LOSSES}")
    if keep not in KEEP:
        raise UnlearnflowError(f"gradients.keep {keep!r} unknown; known: {KEEP}")
    names = candidate_names(bundle.model, candidate_filter) if keep == "candidates" else None
    if names is not None and not names:
        raise UnlearnflowError(f"gradients.keep: candidates, but no parameter passes the filter {candidate_filter}")
    t0 = time.time()
    try:
        grads, stats = accumulate_gradients(bundle, iter_batches(tar, bundle, batch_size), loss, amp=amp, names=names)
    except UnlearnflowError as exc:
        raise UnlearnflowError(f"{tar}: {exc}") from exc
    norms = gradient_norms(grads)
    total = math.sqrt(sum(v * v for v in norms.values()))
    if not total > 0 or not math.isfinite(total):
        raise UnlearnflowError(f"{tar}: the gradient is all zero (or NaN): nothing would be unlearned")
    meta = {
        "format": FORMAT,
        "set": which,
        "loss": loss,
        "sign": SIGN,
        "samples": stats["samples"],
        "batches": stats["batches"],
        "batch_size": batch_size,
        "mean_loss": f"{stats['mean_loss']:.6f}",
        "grad_norm": f"{total:.6g}",
        "model_fingerprint": bundle.info.get("fingerprint", ""),
        "source": str(tar),
        "amp": amp,
        "seconds": f"{time.time() - t0:.2f}",
        "device": str(bundle.device),
        "keep": keep,
        "norms": json.dumps({n: float(f"{v:.9g}") for n, v in norms.items()}, separators=(",", ":")),
    }
    if names is not None:
        all_params = dict(bundle.model.named_parameters())
        meta["candidate_filter"] = json.dumps(candidate_filter or {}, sort_keys=True)
        meta["left_out"] = len(all_params) - len(names)
        meta["left_out_numel"] = sum(p.numel() for n, p in all_params.items() if n not in names)
    save_gradients(out_path, grads, meta)
    return meta


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
    keep: str = "all",
    candidate_filter: dict | None = None,
) -> dict:
    """The gradient stage for one set (forget or retain)."""
    if threads:
        torch.set_num_threads(int(threads))
    if loss not in LOSSES:
        raise UnlearnflowError(f"{which} loss {loss!r} unknown; known: {LOSSES}")
    if keep not in KEEP:
        raise UnlearnflowError(f"gradients.keep {keep!r} unknown; known: {KEEP}")
    bundle = load_clip(model_dir, device=resolve_device(device))
    return set_gradients(
        bundle,
        tar,
        out_path,
        which=which,
        loss=loss,
        batch_size=batch_size,
        amp=amp,
        keep=keep,
        candidate_filter=candidate_filter,
    )
