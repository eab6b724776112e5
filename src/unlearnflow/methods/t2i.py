"""The text-to-image family's method context (stage: ``stages.t2i.unlearn_t2i``).

Methods (``METHODS["t2i"]``) get a :class:`T2IContext` and return the
tensors they changed; the delta is stored in the naming the method declares
(``info["naming"]``: ``open_clip`` for a text-encoder edit found on CLIP, so
SLUG stores its one tensor exactly as on CLIP; ``components`` for
``unet.``/``text_encoder.`` prefixed names).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class T2IContext:
    bundle: object  # models.diffusion.T2IBundle of the base model
    target: dict
    concepts: dict  # {identities|objects|styles: [names]}
    sampling: dict  # what a search generates with: {guidance} (never the evaluation seeds)
    forget_tar: Path | None = None
    retain_tar: Path | None = None
    clip_dir: Path | None = None  # the CLIP whose text tower is the text encoder
    grad_forget: Path | None = None
    layers: Path | None = None
    mask: Path | None = None
    val_sets: dict | None = None  # {identities|objects|styles: {tar, classes}}
    judge: Path | None = None  # the judge's judge.json (SLUG's criterion judge)
    seed: int = 0
