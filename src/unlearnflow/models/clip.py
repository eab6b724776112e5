"""CLIP models: one place that turns a model spec into an open_clip model.

Every CLIP the pipeline uses lives on disk in open_clip's ``local-dir:``
layout, ``open_clip_config.json`` + ``open_clip_model.safetensors``, plus our
``model.json`` (fingerprint, source, parameter count). The model stage
writes that folder either by

- exporting an open_clip model given by architecture and pretrained tag or
  checkpoint path (``source: open_clip``; the real path, e.g. ViT-B-32 /
  laion400m_e32), or
- pretraining the embedded default's tiny CLIP on the synthetic shards
  (``source: train``), an open_clip model config of our own,

so every later stage loads any CLIP the same way (:func:`load_clip`), never
through pickle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import layout
from ..io import InputFileError, UnlearnflowError, atomic_path, read_json, write_json
from ..training import LossBar, lr_at, replace_parameters, train_steps

log = logging.getLogger(__name__)

# a model folder's files (unlearnflow.layout: the rules look for the same names)
CONFIG_NAME, WEIGHTS_NAME, INFO_NAME = layout.CLIP_CONFIG, layout.CLIP_WEIGHTS, layout.CLIP_INFO

# The embedded default (DESIGN.md): learns 12 synthetic identities in minutes.
TINY_CLIP = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 64, "head_width": 16, "patch_size": 4},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3},
}
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UnlearnflowError(f"device {device!r} asked for, but CUDA is not available")
    return torch.device(device)


@dataclass
class ClipBundle:
    """A loaded CLIP with what it needs to read images and text."""

    model: torch.nn.Module
    preprocess: object
    tokenizer: object
    model_dir: Path
    info: dict

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def model_files(model_dir) -> dict:
    d = Path(model_dir)
    return {"config": d / CONFIG_NAME, "weights": d / WEIGHTS_NAME, "info": d / INFO_NAME}


def fingerprint(weights_path) -> str:
    """sha256 of the weights file: names a model in every downstream record."""
    h = hashlib.sha256()
    with open(weights_path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def load_clip(model_dir, device: str | torch.device = "cpu", delta=None) -> ClipBundle:
    """Load a model folder (and optionally a delta of replaced tensors).

    The folder is read through open_clip's ``local-dir:`` schema, so the
    config decides the architecture and tokenizer, and weights come from
    safetensors only.
    """
    import open_clip

    files = model_files(model_dir)
    for key in ("config", "weights"):
        if not files[key].exists():
            raise InputFileError(files[key], f"missing: {Path(model_dir)} is not a model folder")
    from ..io import load_tensors

    load_tensors(files["weights"], what="a model weights")  # names the file if it is damaged
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            f"local-dir:{Path(model_dir)}", device=torch.device("cpu")
        )
        tokenizer = open_clip.get_tokenizer(f"local-dir:{Path(model_dir)}")
    except (ValueError, RuntimeError, OSError) as exc:
        raise InputFileError(model_dir, f"cannot load the CLIP model ({exc})") from exc
    if delta is not None:
        apply_delta(model, delta)
    model.eval()
    model.to(device)
    info = read_json(files["info"]) if files["info"].exists() else {}
    return ClipBundle(model, preprocess, tokenizer, Path(model_dir), info)


def apply_delta(model: torch.nn.Module, delta) -> list[str]:
    """Replace named parameters by the tensors of a delta file (or dict)."""
    from safetensors.torch import load_file

    if isinstance(delta, dict):
        return replace_parameters(model, delta)
    return replace_parameters(model, _load_safetensors(delta, load_file), delta)


def _load_safetensors(path, loader):
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "file not found")
    try:
        return loader(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise InputFileError(path, f"not a readable safetensors file ({exc})") from exc


def save_clip(model: torch.nn.Module, model_cfg: dict, out_dir, info: dict, preprocess_cfg=None) -> dict:
    """Write a model folder atomically, file by file (info last)."""
    from safetensors.torch import save_file

    files = model_files(out_dir)
    files["config"].parent.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {}}
    write_json(files["config"], config)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(files["weights"], suffix=".safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    info = dict(info)
    info.update(
        fingerprint=fingerprint(files["weights"]),
        n_params=int(sum(p.numel() for p in model.parameters())),
        model_cfg=model_cfg,
    )
    write_json(files["info"], info)
    return info


# ------------------------------------------------------------ real path
def export_open_clip(arch: str, pretrained: str | None, out_dir, cache_dir=None, precision="fp32", extra: dict | None = None) -> dict:
    """Export an open_clip model (tag or checkpoint path) to a model folder
    (``extra``: more for its ``model.json``, e.g. the source's stamp)."""
    import open_clip

    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=pretrained, cache_dir=cache_dir, precision=precision
        )
    except Exception as exc:  # noqa: BLE001  (torch's weights_only refusal is an UnpicklingError)
        raise UnlearnflowError(f"open_clip could not create {arch!r} from {pretrained!r}: {exc}") from exc
    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        raise UnlearnflowError(f"open_clip has no config for {arch!r}; known: {open_clip.list_models()[:20]}...")
    pp = getattr(model, "visual", None)
    preprocess_cfg = {}
    if pp is not None and hasattr(pp, "preprocess_cfg"):
        preprocess_cfg = dict(pp.preprocess_cfg)
    info = {"source": "open_clip", "arch": arch, "pretrained": pretrained, **(extra or {})}
    return save_clip(model, model_cfg, out_dir, info, preprocess_cfg)


# ---------------------------------------------------- tiny CLIP training
def tiny_config(overrides: dict | None = None) -> dict:
    cfg = json.loads(json.dumps(TINY_CLIP))
    for key, value in (overrides or {}).items():
        if isinstance(value, dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


def iter_pairs(tars, image_size: int, batch_size: int | None = None, skip=None):
    """(uint8 images (B, 3, S, S), captions) batches of the pairs in some tars,
    resized to the model's image size; one batch of everything without a size.
    ``skip(key)`` true leaves a sample out."""
    from PIL import Image

    from ..data.shards import iter_samples

    images, captions = [], []
    for tar in [tars] if isinstance(tars, (str, Path)) else tars:
        for s in iter_samples(tar):
            if skip is not None and skip(s.key):
                continue
            img = s.image()
            if img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.BICUBIC)
            images.append(np.asarray(img, dtype=np.uint8))
            captions.append(s.caption)
            if batch_size and len(images) == batch_size:
                yield _stack(images), captions
                images, captions = [], []
    if images:
        yield _stack(images), captions


def _stack(images: list) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def load_pairs(tars, image_size: int, skip=None) -> tuple[torch.Tensor, list[str]]:
    """All (image, caption) pairs of some tars as one uint8 tensor and a list."""
    batches = list(iter_pairs(tars, image_size, skip=skip))
    if not batches:
        raise UnlearnflowError(f"no image-text pairs in {list(map(str, tars))}")
    return batches[0]


def normalise(images_u8: torch.Tensor) -> torch.Tensor:
    x = images_u8.float() / 255.0
    mean = torch.tensor(OPENAI_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def train_tiny_clip(
    tars,
    out_dir,
    *,
    model_cfg: dict,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    warmup_steps: int,
    seed: int,
    device: str = "auto",
    threads: int | None = None,
    heldout_fraction: float = 0.0,
    data_seed: int = 0,
) -> dict:
    """Pretrain a CLIP from scratch on image-text tars (InfoNCE, AdamW, cosine),
    leaving out the rows that selection holds out as MIA non-members
    (``data.heldout.is_heldout``), so they stay unseen."""
    import open_clip
    if threads:
        torch.set_num_threads(int(threads))
    dev = resolve_device(device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    size = model_cfg["vision_cfg"]["image_size"]
    skip = None
    if heldout_fraction > 0:
        from ..data.heldout import is_heldout

        def skip(key):
            return is_heldout(key, heldout_fraction, data_seed)

    images, captions = load_pairs(tars, size, skip=skip)
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=model_cfg["text_cfg"]["context_length"])
    tokens = tokenizer(captions)
    model = open_clip.CLIP(**model_cfg).to(dev)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    loss_fn = open_clip.ClipLoss()
    n = len(captions)
    steps_per_epoch = max(1, n // batch_size)
    total = epochs * steps_per_epoch

    bar = LossBar(total, "pretrain tiny CLIP", every=50, digits=3)

    def batches():
        for _epoch in range(epochs):
            order = torch.randperm(n, generator=gen)
            for b in range(steps_per_epoch):
                idx = order[b * batch_size : (b + 1) * batch_size]
                x = normalise(images[idx].to(dev))
                # light augmentation: random mirror (captions never say left/right)
                flip = torch.rand(len(idx), generator=gen) < 0.5
                x[flip] = x[flip].flip(-1)
                yield x, tokens[idx].to(dev)

    def loss_of(batch) -> torch.Tensor:
        img_f, txt_f, scale = model(*batch)
        return loss_fn(img_f, txt_f, scale)

    @torch.no_grad()
    def clamp_temperature() -> None:  # as in CLIP: cap the temperature at 100
        model.logit_scale.clamp_(0, math.log(100))

    step = train_steps(
        opt, batches(), loss_of, after_step=clamp_temperature, on_step=bar,
        lr=lambda s: lr_at(s, lr=lr, total=total, warmup_steps=warmup_steps),
    )  # fmt: skip
    bar.close()
    model.eval()
    info = {
        "source": "train",
        "arch": "tiny-clip",
        "train": {
            "pairs": n,
            "epochs": epochs,
            "steps": step,
            "batch_size": batch_size,
            "lr": lr,
            "weight_decay": weight_decay,
            "seed": seed,
            "heldout_fraction": heldout_fraction,
            **bar.summary(dev),
        },
    }
    preprocess_cfg = {"size": size, "mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic"}
    return save_clip(model.cpu(), model_cfg, out_dir, info, preprocess_cfg)
