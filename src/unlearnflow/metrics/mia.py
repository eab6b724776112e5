"""Membership inference on image-caption similarity (SLUG's MIA).

The attacker sees one number per pair, the cosine between the image and its
own caption, and fits a logistic regression to tell forget-set pairs
(members: the model was trained on them) from held-out pairs (non-members).
Its held-out accuracy is reported in percent: 50 means it cannot tell them
apart, which is what a successful unlearning should reach.

Protocol (REFERENCE.md section 1): per seed 0-9, subsample the larger class
to the size of the smaller (``RandomState(seed)``), score with
``StratifiedShuffleSplit(10, test_size=0.1, random_state=seed)`` (the
reference's test size; ``evaluation.mia_test_size``, docs/fidelity.md item
7), average the split accuracies; report the mean and standard deviation
over seeds.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from ..data.shards import iter_samples
from ..io import InputFileError, UnlearnflowError
from .zeroshot import _param_dtype, eval_mode

MIN_PER_CLASS = 4  # below this, a stratified split leaves almost nothing to train or test on
TEST_SIZE = 0.1  # the reference's StratifiedShuffleSplit test_size


def pair_cosine(image_features, text_features) -> np.ndarray:
    """Row-wise cosine between two ``(N, D)`` arrays or tensors -> ``(N,)`` float64."""
    a = torch.as_tensor(image_features).float()
    b = torch.as_tensor(text_features).float()
    if a.shape != b.shape or a.ndim != 2:
        raise UnlearnflowError(f"pair_cosine: shapes {tuple(a.shape)} and {tuple(b.shape)} differ or are not 2-D")
    cos = (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(dim=-1)
    return cos.double().cpu().numpy()


@torch.no_grad()
def _encode_batch(model, tokenizer, images, captions, device) -> np.ndarray:
    dtype = _param_dtype(model)
    img = model.encode_image(torch.stack(images).to(device=device, dtype=dtype))
    txt = model.encode_text(tokenizer(captions).to(device))
    return pair_cosine(img.float().cpu(), txt.float().cpu())


def encode_pairs(
    model: torch.nn.Module,
    tokenizer: Callable,
    tar_path: os.PathLike | str,
    preprocess: Callable,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    max_pairs: int | None = None,
) -> np.ndarray:
    """Cosine of each image with its own caption, for the pairs of a tar.

    Reads ``key.jpg`` + ``key.txt`` in tar order (the first ``max_pairs``),
    streaming so only one batch of images is in memory.
    """
    out: list[np.ndarray] = []
    images, captions = [], []
    n = 0
    with eval_mode(model):
        for sample in iter_samples(tar_path):
            if max_pairs is not None and n >= max_pairs:
                break
            try:
                image = sample.image()
            except KeyError as exc:
                raise InputFileError(tar_path, f"sample {sample.key} has no image") from exc
            images.append(preprocess(image))
            captions.append(sample.caption)
            n += 1
            if len(images) == batch_size:
                out.append(_encode_batch(model, tokenizer, images, captions, device))
                images, captions = [], []
        if images:
            out.append(_encode_batch(model, tokenizer, images, captions, device))
    if not out:
        # an empty forget set must not pass silently as "no membership signal"
        raise InputFileError(tar_path, "no image-caption pairs")
    return np.concatenate(out)


def mia_accuracy(
    member_scores,
    nonmember_scores,
    seeds: Iterable[int] = range(10),
    n_splits: int = 10,
    test_size: float = TEST_SIZE,
) -> dict:
    """Accuracy (percent) of a logistic-regression attack on a 1-D score.

    Returns ``{"mean", "std", "per_seed", "n_per_class", "n_members",
    "n_nonmembers"}``; ``std`` is over seeds.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedShuffleSplit

    members = np.asarray(member_scores, dtype=np.float64).ravel()
    nonmembers = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    if not 0 < test_size < 1:
        raise UnlearnflowError(f"membership inference: test_size {test_size!r} must lie in (0, 1)")
    # a stratified test split needs one pair of each class: 2n * test_size >= 2
    need = max(MIN_PER_CLASS, int(np.ceil(1.0 / test_size - 1e-9)), int(np.ceil(1.0 / (1.0 - test_size) - 1e-9)))
    if min(len(members), len(nonmembers)) < need:
        raise UnlearnflowError(
            f"membership inference with test_size {test_size:g} needs at least {need} pairs per class; got "
            f"{len(members)} members (forget pairs) and {len(nonmembers)} non-members (held-out pairs) "
            "(a larger evaluation.mia_test_size needs fewer)"
        )
    if not (np.isfinite(members).all() and np.isfinite(nonmembers).all()):
        raise UnlearnflowError("membership inference: scores contain NaN or inf")
    seeds = list(seeds)
    if not seeds:
        raise UnlearnflowError("membership inference: no seeds")
    n = min(len(members), len(nonmembers))
    y = np.r_[np.ones(n), np.zeros(n)]
    per_seed = []
    for seed in seeds:
        rng = np.random.RandomState(seed)
        # balance the classes, so 50% is chance whatever the set sizes
        m = members if len(members) == n else members[rng.choice(len(members), n, replace=False)]
        h = nonmembers if len(nonmembers) == n else nonmembers[rng.choice(len(nonmembers), n, replace=False)]
        x = np.r_[m, h][:, None]
        splitter = StratifiedShuffleSplit(n_splits=n_splits, test_size=test_size, random_state=seed)
        accs = []
        for train, test in splitter.split(x, y):
            clf = LogisticRegression().fit(x[train], y[train])
            accs.append(clf.score(x[test], y[test]))
        per_seed.append(100.0 * float(np.mean(accs)))
    return {
        "mean": float(np.mean(per_seed)),
        "std": float(np.std(per_seed)),
        "per_seed": per_seed,
        "n_per_class": n,
        "n_members": len(members),
        "n_nonmembers": len(nonmembers),
        "test_size": float(test_size),
        # pairs each split scores on: below ~20 the mean is mostly noise
        "test_pairs": int(np.ceil(2 * n * test_size - 1e-9)),
    }


__all__ = ["pair_cosine", "encode_pairs", "mia_accuracy", "MIN_PER_CLASS"]
