"""CLIP zero-shot classification: forget accuracy and retained utility.

The evaluation follows SLUG (REFERENCE.md section 1, "CLIP evaluation"):

* identities: zero-shot over *all* identity names with the single template
  ``"{c}."``; logits ``100 * image · text``. FA@1 / FA@5 are top-1 / top-5
  accuracy on images of the forgotten identity; identity accuracy is the mean
  of per-identity top-1 / top-5 accuracy over the *other* identities (the
  reference includes the target in that mean; we exclude it so that
  forgetting is not counted as lost utility).
* objects (ImageNet-style): zero-shot with the 7 "simple" templates, plain
  mean accuracy over images.

The work is split into three pure steps so that callers can cache:
``encode_images`` (vision tower only), ``text_classifier`` (text tower
only) and the scoring functions (tensors in, numbers out). A step-size search
that edits one text layer re-encodes only the class names, and one that edits
a vision layer re-encodes only the images.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from ..data.shards import iter_samples
from ..io import InputFileError, UnlearnflowError, read_json

IDENTITY_TEMPLATES: tuple[str, ...] = ("{c}.",)

# The 7 templates CLIP's authors found best on ImageNet (open_clip's SIMPLE_IMAGENET_TEMPLATES).
SIMPLE_TEMPLATES: tuple[str, ...] = (
    "itap of a {c}.",
    "a bad photo of the {c}.",
    "a origami {c}.",
    "a photo of the large {c}.",
    "a {c} in a video game.",
    "art of the {c}.",
    "a photo of the small {c}.",
)

# Style names (UnlearnCanvas-like): the phrasings a caption uses for a style.
STYLE_TEMPLATES: tuple[str, ...] = ("{c} art.", "in the style of {c}.", "a {c} style picture.")

LOGIT_SCALE = 100.0  # fixed, as in the reference; the model's own logit_scale is not used


# ------------------------------------------------------------------ helpers
@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put every submodule in eval mode, then restore each one's own flag.

    Restoring per module (not ``model.train(was_training)``) keeps a caller's
    mixed setup, e.g. a frozen tower left in eval mode during fine-tuning.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def _param_dtype(module: torch.nn.Module) -> torch.dtype:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _format_template(template: str, classname: str) -> str:
    # accept both "{c}" and "{}" placeholders
    return template.format(classname, c=classname)


def _template_fns(templates: Sequence[str | Callable[[str], str]]) -> list[Callable[[str], str]]:
    # open_clip's builder calls template.format(c) positionally, which fails on
    # "{c}"; hand it callables instead (it decides by the type of templates[0]).
    if isinstance(templates, str) or len(templates) == 0:
        raise UnlearnflowError(f"templates: a non-empty sequence is needed, got {templates!r}")
    return [t if callable(t) else functools.partial(_format_template, t) for t in templates]


def normalize_name(name: str) -> str:
    """``"mira_castell"``, ``" Mira  Castell"`` -> ``"mira castell"``."""
    return re.sub(r"\s+", " ", name.replace("_", " ")).strip().lower()


def resolve_target(classnames: Sequence[str], target: str) -> int:
    """Index of ``target`` in ``classnames``: case-insensitive, ``_`` == space."""
    want = normalize_name(target)
    hits = [i for i, c in enumerate(classnames) if normalize_name(c) == want]
    if not hits:
        raise UnlearnflowError(
            f"target {target!r} is not one of the {len(classnames)} class names: "
            + ", ".join(repr(c) for c in classnames)
        )
    if len(hits) > 1:
        raise UnlearnflowError(
            f"target {target!r} matches several class names: {[classnames[i] for i in hits]}"
        )
    return hits[0]


# --------------------------------------------------------------- loading
@dataclass
class LabelledImages:
    """Preprocessed images of a labelled evaluation tar."""

    images: torch.Tensor  # (N, 3, H, W) float
    labels: torch.Tensor  # (N,) long, class index into classes.json "classes"
    keys: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)


def read_classes(path: os.PathLike | str) -> list[str]:
    """The ``classes`` list of an evaluation set's ``classes.json``."""
    info = read_json(path)
    classes = info.get("classes") if isinstance(info, dict) else None
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise InputFileError(path, 'expected {"classes": [name, ...]} with at least one name')
    return classes


def _label_of(path, sample) -> int:
    meta = sample.meta
    if "label_index" in meta:
        return int(meta["label_index"])
    if "cls" in sample.files:
        return int(sample.files["cls"].decode().strip())
    raise InputFileError(path, f"sample {sample.key} has no label (json label_index or .cls)")


def load_labelled(
    tar_path: os.PathLike | str,
    preprocess: Callable,
    max_per_class: int | None = None,
) -> LabelledImages:
    """Read a labelled eval tar (``key.jpg`` + ``key.json`` with ``label_index``).

    ``max_per_class`` keeps the first images of each class in tar order (the
    tars are written deterministically, so this is a fixed subset).
    """
    images, labels, keys = [], [], []
    seen: dict[int, int] = {}
    for sample in iter_samples(tar_path):
        label = _label_of(tar_path, sample)
        if max_per_class is not None and seen.get(label, 0) >= max_per_class:
            continue
        seen[label] = seen.get(label, 0) + 1
        try:
            image = sample.image()
        except KeyError as exc:
            raise InputFileError(tar_path, f"sample {sample.key} has no image") from exc
        images.append(preprocess(image))
        labels.append(label)
        keys.append(sample.key)
    if not images:
        raise InputFileError(tar_path, "no labelled images")
    return LabelledImages(torch.stack(images), torch.tensor(labels, dtype=torch.long), keys)


# --------------------------------------------------------------- encoders
@torch.no_grad()
def encode_images(
    model: torch.nn.Module,
    images: torch.Tensor,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """L2-normalised image features ``(N, D)``, float32, on the CPU.

    Features are returned on the CPU whatever ``device`` is: they are small,
    and scoring then never mixes devices.
    """
    if len(images) == 0:
        raise UnlearnflowError("encode_images: no images")
    dtype = _param_dtype(model)
    out = []
    with eval_mode(model):
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(device=device, dtype=dtype)
            feats = model.encode_image(batch)
            out.append(F.normalize(feats.float(), dim=-1).cpu())
    return torch.cat(out)


def text_classifier(
    model: torch.nn.Module,
    tokenizer: Callable,
    classnames: Sequence[str],
    templates: Sequence[str | Callable[[str], str]] = IDENTITY_TEMPLATES,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Zero-shot weights ``(D, C)``: per class, the normalised mean of the
    normalised template embeddings (open_clip's builder), float32 on the CPU."""
    import open_clip

    if len(classnames) == 0:
        raise UnlearnflowError("text_classifier: no class names")
    with eval_mode(model):
        weights = open_clip.build_zero_shot_classifier(
            model,
            tokenizer=tokenizer,
            classnames=list(classnames),
            templates=_template_fns(templates),
            num_classes_per_batch=10,
            device=device,
            use_tqdm=False,
        )
    return weights.float().cpu()


# ---------------------------------------------------------------- scoring
def topk_correct(
    image_features: torch.Tensor,
    classifier: torch.Tensor,
    labels: torch.Tensor,
    ks: Sequence[int] = (1, 5),
) -> dict[int, torch.Tensor]:
    """``{k: BoolTensor (N,)}``: is the true label among the top k logits.

    ``k`` larger than the number of classes is capped (top-5 of 3 classes is
    always correct), keyed by the ``k`` asked for.
    """
    feats = image_features.float()
    weights = classifier.to(device=feats.device, dtype=torch.float32)
    labels = torch.as_tensor(labels, device=feats.device).long()
    if feats.ndim != 2 or weights.ndim != 2 or feats.shape[1] != weights.shape[0]:
        raise UnlearnflowError(
            f"feature shapes do not match: images {tuple(feats.shape)}, classifier {tuple(weights.shape)}"
        )
    if labels.shape != (feats.shape[0],):
        raise UnlearnflowError(f"{labels.numel()} labels for {feats.shape[0]} images")
    n_classes = weights.shape[1]
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise UnlearnflowError(f"labels outside 0..{n_classes - 1}: {labels.unique().tolist()}")
    logits = LOGIT_SCALE * feats @ weights
    kmax = min(max(ks), n_classes)
    top = logits.topk(kmax, dim=1).indices  # (N, kmax), best first
    hit = top == labels[:, None]
    return {k: hit[:, : min(k, n_classes)].any(dim=1).cpu() for k in ks}


def _pct(mask: torch.Tensor) -> float:
    return 100.0 * mask.float().mean().item() if mask.numel() else math.nan


def identity_scores(
    image_features: torch.Tensor,
    labels: torch.Tensor,
    classifier: torch.Tensor,
    classnames: Sequence[str],
    target_name: str | None,
) -> dict:
    """FA@1/FA@5 on the target's images, mean per-identity accuracy on the rest.

    All percentages. ``target_name=None`` scores a model with no target (the
    base model): ``fa1``/``fa5`` are NaN and every identity counts.
    Identities with no images are left out of the mean.
    """
    if classifier.shape[-1] != len(classnames):
        raise UnlearnflowError(f"{len(classnames)} class names for a {classifier.shape[-1]}-class classifier")
    labels = torch.as_tensor(labels).long().cpu()
    target = None if target_name is None else resolve_target(classnames, target_name)
    hits = topk_correct(image_features, classifier, labels, ks=(1, 5))
    per_identity = {}
    for c, name in enumerate(classnames):
        mask = labels == c
        if c == target or not mask.any():
            continue
        per_identity[name] = {"n": int(mask.sum()), "acc1": _pct(hits[1][mask]), "acc5": _pct(hits[5][mask])}
    scores = {
        "target": None if target is None else classnames[target],
        "fa1": math.nan,
        "fa5": math.nan,
        "n_forget_images": 0,
    }
    if target is not None:
        mask = labels == target
        if not mask.any():
            raise UnlearnflowError(f"no images of the target {classnames[target]!r} among {len(labels)} images")
        scores.update(fa1=_pct(hits[1][mask]), fa5=_pct(hits[5][mask]), n_forget_images=int(mask.sum()))
    accs1 = [v["acc1"] for v in per_identity.values()]
    accs5 = [v["acc5"] for v in per_identity.values()]
    scores.update(
        identity_acc1=sum(accs1) / len(accs1) if accs1 else math.nan,
        identity_acc5=sum(accs5) / len(accs5) if accs5 else math.nan,
        n_identities=len(per_identity),
        n_images=len(labels),
        per_identity=per_identity,
    )
    return scores


def object_scores(
    image_features: torch.Tensor,
    labels: torch.Tensor,
    classifier: torch.Tensor,
    exclude_label: int | None = None,
) -> dict:
    """Plain top-1/top-5 accuracy over images, in percent.

    With ``exclude_label`` (an object target), ``test_acc*`` cover the other
    classes' images only and ``fa1``/``fa5`` the target class's images.
    """
    labels = torch.as_tensor(labels).long().cpu()
    hits = topk_correct(image_features, classifier, labels, ks=(1, 5))
    keep = torch.ones_like(labels, dtype=torch.bool)
    scores = {"fa1": math.nan, "fa5": math.nan, "n_forget_images": 0}
    if exclude_label is not None:
        forget = labels == int(exclude_label)
        if not forget.any():
            raise UnlearnflowError(f"no images of the target class {exclude_label} among {len(labels)} images")
        keep = ~forget
        scores.update(fa1=_pct(hits[1][forget]), fa5=_pct(hits[5][forget]), n_forget_images=int(forget.sum()))
    scores.update(test_acc1=_pct(hits[1][keep]), test_acc5=_pct(hits[5][keep]), n_images=int(keep.sum()))
    return scores


__all__ = [
    "IDENTITY_TEMPLATES",
    "SIMPLE_TEMPLATES",
    "STYLE_TEMPLATES",
    "LabelledImages",
    "load_labelled",
    "read_classes",
    "encode_images",
    "text_classifier",
    "topk_correct",
    "identity_scores",
    "object_scores",
    "resolve_target",
    "normalize_name",
    "eval_mode",
]
