"""Scoring of generated images: UA / IRA / CRA by the judge of
``t2i.judge`` (metrics/judge.py: an independent classifier by default),
FID and KID against real images of the retained concepts, IS, CLIP score.

- UA: 100 - accuracy of the forget prompts' images in the target's domain
  (identity among identities, style among styles, ...).
- IRA: accuracy of the retain prompts' images in the target's domain.
- CRA: accuracy of the retain prompts' images in the other domains (an
  identity target: objects; a style target: the objects of the retained
  styles' images, as UnlearnCanvas does).
- FID / KID: retain images against the held-out real images of the same
  concepts (the ``test`` split of the eval sets), in the feature network
  named in the record (``feature_net``).
- IS over the retain images (class probabilities of the feature network);
  CLIP score = 100 x cos(image, its prompt) for forget and retain sets.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..io import UnlearnflowError, read_json
from . import images as im
from .zeroshot import STYLE_TEMPLATES

CLASSIFIER_TEMPLATES = {
    "identity": ("{c}.",),
    "object": ("a photo of a {c}.", "a photo of the small {c}.", "art of the {c}."),
    "style": STYLE_TEMPLATES,
}
EVAL_SET_OF = {"identity": "identities", "object": "objects", "style": "styles"}


def zero_shot(clip_bundle, images_u8: torch.Tensor, classes: list[str], templates) -> torch.Tensor:
    """Predicted class index per image (the tiny CLIP as classifier)."""
    from ..models.clip import normalise
    from .zeroshot import encode_images, text_classifier

    size = clip_bundle.model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    x = images_u8.float()
    if x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", antialias=True).clamp(0, 255)
    feats = encode_images(clip_bundle.model, normalise(x.round().to(torch.uint8)), device=clip_bundle.device)
    weights = text_classifier(clip_bundle.model, clip_bundle.tokenizer, classes, templates, device=clip_bundle.device)
    return (feats @ weights).argmax(dim=1)


def _pct(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(100.0 * values.mean()) if len(values) else float("nan")


def load_generated(prompts: pd.DataFrame, which: str) -> tuple[torch.Tensor, pd.DataFrame]:
    rows = prompts[prompts["set"] == which].reset_index(drop=True)
    if rows.empty:
        raise UnlearnflowError(f"no {which!r} rows in the prompts table")
    folder = Path(rows["dir"].iloc[0])
    imgs, names = im.load_pngs(folder)
    by_name = dict(zip(names, range(len(names))))
    missing = [f for f in rows["file"] if Path(f).stem not in by_name]
    if missing:
        raise UnlearnflowError(f"{folder}: {len(missing)} generated image(s) missing, e.g. {missing[0]}")
    return imgs[[by_name[Path(f).stem] for f in rows["file"]]], rows


def reference_images(eval_sets: dict, domain_labels: dict[str, set]) -> torch.Tensor:
    """Held-out real images whose class is among the given labels per domain."""
    from ..data.shards import iter_samples

    out = []
    for domain, wanted in domain_labels.items():
        tar = eval_sets[EVAL_SET_OF[domain]]["tar"]
        wanted = {w.lower() for w in wanted}
        for s in iter_samples(tar):
            if str(s.meta.get("label", "")).lower() in wanted:
                out.append(torch.from_numpy(np.asarray(s.image().convert("RGB"))).permute(2, 0, 1))
    if not out:
        raise UnlearnflowError(f"no reference images for {domain_labels}")
    return torch.stack(out)


def _domain_scores(acc: dict, domain: str) -> dict:
    """UA / IRA / CRA from per-image correctness of the forget and retain sets."""
    f_acc, r_acc = acc["forget"], acc["retain"]
    cross = [v for d, v in r_acc.items() if d != domain]
    return {
        "ua": 100.0 - _pct(f_acc[domain]),
        "ira": _pct(r_acc[domain]) if domain in r_acc else float("nan"),
        "cra": _pct(np.concatenate(cross)) if cross else float("nan"),
    }


def evaluate_generations(prompts: pd.DataFrame, target: dict, judge, net: im.FeatureNet, eval_sets: dict, clip_bundle=None):
    """(record, per-image predictions table). UA / IRA / CRA come from
    ``judge``; with a CLIP bundle and a judge of another kind, the zero-shot
    CLIP's view of the same pictures is recorded beside them (``ua_clip``...)."""
    from .judge import clip_judge, correctness, predictions

    classes = {d: read_json(eval_sets[s]["classes"])["classes"] for d, s in EVAL_SET_OF.items() if s in eval_sets}
    domain = target["kind"]
    sets = {w: load_generated(prompts, w) for w in ("forget", "retain")}
    labels = {w: [json.loads(v) for v in rows["labels"]] for w, (_, rows) in sets.items()}
    acc = {w: correctness(judge, img, labels[w]) for w, (img, _) in sets.items()}
    record = _domain_scores(acc, domain)
    if clip_bundle is not None and judge.kind != "clip":
        zs = clip_judge(clip_bundle, classes)
        zs_acc = {w: correctness(zs, img, labels[w]) for w, (img, _) in sets.items()}
        record.update({f"{k}_clip": v for k, v in _domain_scores(zs_acc, domain).items()})
    f_img, f_rows = sets["forget"]
    r_img, r_rows = sets["retain"]
    # the primary label of a retain prompt: the first domain it names in IRA's order
    primary = {}
    for lab in labels["retain"]:
        d = domain if domain in lab else sorted(lab)[0]
        primary.setdefault(d, set()).add(lab[d])
    ref = reference_images(eval_sets, primary)
    gen_feats, ref_feats = net.image_features(r_img), net.image_features(ref)
    all_classes = [c for d in sorted({d for lab in labels["retain"] for d in lab}) for c in classes[d]]
    is_mean, is_std = im.inception_score(net.probs(r_img, all_classes), splits=10)
    record.update({
        "fid": im.fid(gen_feats, ref_feats),
        "kid": im.kid(gen_feats, ref_feats),
        "is": is_mean,
        "is_std": is_std,
        "clip_score": im.clip_score(net, r_img, list(r_rows["prompt"])) if net.encode_text else float("nan"),
        "clip_score_forget": im.clip_score(net, f_img, list(f_rows["prompt"])) if net.encode_text else float("nan"),
        "n_forget_images": int(len(f_img)),
        "n_retain_images": int(len(r_img)),
        "n_reference_images": int(len(ref)),
        "feature_net": net.name,
        "classifier": judge.describe(),
        "judge": judge.name,
        "judge_kind": judge.kind,
        "judge_heldout": {d: v["accuracy"] for d, v in (judge.info.get("heldout") or {}).items()},
    })
    tables = []
    for w, (img, rows) in sets.items():
        pred = predictions(judge, img, labels[w])
        correct = [
            bool(acc[w][domain if domain in lab else sorted(lab)[0]][i] == 1.0) for i, lab in enumerate(labels[w])
        ]
        tables.append(rows[["set", "file", "prompt", "seed", "labels"]].assign(
            predicted=[json.dumps(p, sort_keys=True) for p in pred], correct=correct))
    return record, pd.concat(tables, ignore_index=True)
