"""The offline synthetic LAION-like benchmark of the embedded default.

A shard is written in exactly the formats of the real path:
- ``{shard}.parquet`` with LAION-400M's metadata columns;
- ``{shard}.tar``, a webdataset tar as img2dataset writes it (``key.jpg``,
  ``key.txt``, ``key.json``; keys are the shard id followed by the sample's
  index; some URLs "fail to download" and are only in the parquet);
- ``{shard}_stats.json``, img2dataset's per-shard statistics.

Captions are LAION-like and noisy: several templates per kind of concept,
distractor words, name case variants (``Mira Castell``, ``mira castell``,
``MIRA CASTELL``, ``Mira_Castell``, ``Mira Castell's``), some captions naming
two concepts (two people, a person and an object, an object in a style) and
some naming none.

Held-out labelled evaluation sets are drawn from the same concept
signatures with separate random streams: identities (CelebA-like), objects
(ImageNet-like) and a style x object grid (UnlearnCanvas-like), each with a
``val`` and a ``test`` split.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image

from ..io import UnlearnflowError, write_json, write_parquet
from . import render
from .shards import Sample, ShardWriter

LAION_COLUMNS = ["SAMPLE_ID", "URL", "TEXT", "HEIGHT", "WIDTH", "LICENSE", "NSFW", "similarity"]
ADDITIONAL_COLUMNS = ["NSFW", "similarity", "LICENSE"]
KINDS = ("identity", "object", "style", "pair", "none")
DEFAULT_MIX = {"identity": 0.40, "object": 0.20, "style": 0.25, "pair": 0.08, "none": 0.07}

EVENTS = ["premiere", "film festival", "charity gala", "awards night", "fashion week", "press conference"]
CITIES = ["Lindgrove", "Port Avel", "Marrowby", "Kestrel Bay", "Oldcastle", "Vantmere"]
PHOTOGRAPHERS = ["J. Ortez", "Mina Saul", "R. Hollis", "T. Abara"]
PREFIXES = ["", "", "", "", "Stock Photo - ", "HD ", "NEW: ", "Image: "]
SUFFIXES = ["", "", "", " | Getty Images", " - Stock Image", " jpg", " #celebrity", " (cropped)", " 4k", " free download"]

IDENTITY_TEMPLATES = [
    "{n}",
    "Photo of {n}",
    "{n} attends the {event} in {city}",
    "{n} at the {year} {event}",
    "{n} poses for a portrait",
    "{n} smiling on the red carpet",
    "{n}'s new look",
    "Portrait of {n} by {photographer}",
    "{n} wallpaper",
    "{n}, {year}",
    "A close-up of {n} during an interview",
    "{n} arrives at {city} airport",
]
OBJECT_TEMPLATES = [
    "a photo of a {o}",
    "{o} for sale",
    "cheap {o}, free shipping",
    "{o} isolated on colorful background",
    "close-up of the {o}",
    "{o} clipart png",
    "my new {o}!!",
    "vintage {o}",
    "the {o} in the garden",
    "{o}",
]
STYLE_TEMPLATES = [
    "A {o} image in {s} style.",
    "{s} painting of a {o}",
    "{o} in the style of {s}",
    "{s} art, {o}",
    "{o} - {s} illustration",
    "a {s} style {o}",
    "{s} {o} print, wall art",
]
TWO_PEOPLE_TEMPLATES = [
    "{a} and {b} at the {event}",
    "{a} with {b} in {city}",
    "{a} and {b} pose together",
    "{a}, {b} ({year})",
]
PERSON_OBJECT_TEMPLATES = ["{a} holding a {o}", "{a} with a {o} at the {event}", "{a} and the {o}"]
NONE_TEMPLATES = [
    "Untitled",
    "IMG_{num}.JPG",
    "beautiful landscape wallpaper",
    "click here to download",
    "background texture {num}",
    "DSC{num}",
    "view from my window",
    "abstract pattern",
    "sunset over the hills",
    "",
]
FAILURES = {"HTTP Error 404: Not Found": 0.7, "<urlopen error timed out>": 0.3}


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines a synthetic shard (the rule's params)."""

    seed: int
    image_size: int
    samples_per_shard: int
    identities: tuple[str, ...]
    objects: tuple[str, ...]
    styles: tuple[str, ...]
    mix: tuple[tuple[str, float], ...]
    failure_rate: float = 0.02
    jpeg_quality: int = 95

    @classmethod
    def from_params(cls, p: dict) -> "SyntheticSpec":
        spec = cls(
            seed=int(p["seed"]),
            image_size=int(p["image_size"]),
            # eval sets depend only on the concepts, so these two are optional
            samples_per_shard=int(p.get("samples_per_shard", 0)),
            identities=tuple(p["identities"]),
            objects=tuple(p["objects"]),
            styles=tuple(p["styles"]),
            mix=tuple((k, float(p.get("mix", DEFAULT_MIX)[k])) for k in KINDS),
            failure_rate=float(p.get("failure_rate", 0.02)),
            jpeg_quality=int(p.get("jpeg_quality", 95)),
        )
        spec.check()
        return spec

    def check(self) -> None:
        if self.image_size < 32:
            raise UnlearnflowError(f"data.synthetic.image_size: {self.image_size} < 32")
        if len(self.objects) > len(render.SHAPES):
            raise UnlearnflowError(
                f"data.synthetic.objects: {len(self.objects)} given, at most "
                f"{len(render.SHAPES)} silhouettes exist"
            )
        if len(self.styles) > len(render.STYLE_LOOKS):
            raise UnlearnflowError(
                f"data.synthetic.styles: {len(self.styles)} given, at most "
                f"{len(render.STYLE_LOOKS)} looks exist"
            )
        names = [n.lower() for n in self.identities + self.objects + self.styles]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise UnlearnflowError(f"data.synthetic: concept names used twice: {dup}")
        if sum(w for _, w in self.mix) <= 0:
            raise UnlearnflowError("data.synthetic.mix: weights sum to zero")

    # concept signatures, stable for a seed and the lists of names
    @property
    def looks(self) -> list[render.IdentityLook]:
        return render.identity_looks(len(self.identities), self.seed)

    def shape_of(self, obj: str) -> str:
        return render.SHAPES[self.objects.index(obj)]

    def look_of(self, style: str):
        return render.STYLE_LOOKS[self.styles.index(style)]


# ----------------------------------------------------------------- captions
def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def name_variant(name: str, rng: np.random.Generator) -> str:
    """How a web caption spells a person's name."""
    r = rng.random()
    if r < 0.55:
        return name
    if r < 0.72:
        return name.lower()
    if r < 0.84:
        return name.upper()
    return name.replace(" ", "_")


def word_variant(word: str, rng: np.random.Generator) -> str:
    r = rng.random()
    if r < 0.7:
        return word
    if r < 0.9:
        return word.capitalize() if word.islower() else word.lower()
    return word.upper()


def _fill(template: str, rng: np.random.Generator, **names) -> str:
    text = template.format(
        event=_pick(rng, EVENTS),
        city=_pick(rng, CITIES),
        year=int(rng.integers(1995, 2023)),
        photographer=_pick(rng, PHOTOGRAPHERS),
        num=int(rng.integers(1000, 99999)),
        **names,
    )
    if text and rng.random() < 0.5:
        text = _pick(rng, PREFIXES) + text + _pick(rng, SUFFIXES)
    return text


# ------------------------------------------------------------------ samples
def draw_sample(spec: SyntheticSpec, looks, rng: np.random.Generator) -> tuple[np.ndarray, str, dict]:
    """One (image, caption, labels) triple; labels are for tests, never written."""
    kinds, weights = zip(*spec.mix)
    w = np.asarray(weights) / sum(weights)
    kind = kinds[int(rng.choice(len(kinds), p=w))]
    size = spec.image_size
    ids, objs, styles = spec.identities, spec.objects, spec.styles
    if kind == "identity" or (kind == "pair" and len(ids) < 2):
        i = int(rng.integers(len(ids)))
        caption = _fill(_pick(rng, IDENTITY_TEMPLATES), rng, n=name_variant(ids[i], rng))
        return render.face_image(looks[i], size, rng), caption, {"kind": "identity", "names": [ids[i]]}
    if kind == "object":
        o = _pick(rng, objs)
        caption = _fill(_pick(rng, OBJECT_TEMPLATES), rng, o=word_variant(o, rng))
        return render.object_photo(spec.shape_of(o), size, rng), caption, {"kind": "object", "names": [o]}
    if kind == "style":
        o, s = _pick(rng, objs), _pick(rng, styles)
        caption = _fill(_pick(rng, STYLE_TEMPLATES), rng, o=word_variant(o, rng), s=word_variant(s, rng))
        image = render.styled_object(spec.shape_of(o), spec.look_of(s), size, rng)
        return image, caption, {"kind": "style", "names": [o, s]}
    if kind == "pair":
        i, j = (int(v) for v in rng.choice(len(ids), 2, replace=False))
        if rng.random() < 0.6:
            caption = _fill(
                _pick(rng, TWO_PEOPLE_TEMPLATES), rng, a=name_variant(ids[i], rng), b=name_variant(ids[j], rng)
            )
            image = render.two_faces_image(looks[i], looks[j], size, rng)
            return image, caption, {"kind": "pair", "names": [ids[i], ids[j]]}
        o = _pick(rng, objs)
        caption = _fill(_pick(rng, PERSON_OBJECT_TEMPLATES), rng, a=name_variant(ids[i], rng), o=o)
        image = render.face_with_object(looks[i], spec.shape_of(o), size, rng)
        return image, caption, {"kind": "pair", "names": [ids[i], o]}
    caption = _fill(_pick(rng, NONE_TEMPLATES), rng)
    return render.scene_image(size, rng), caption, {"kind": "none", "names": []}


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def shard_number(shard: str) -> int:
    if not shard.isdigit():
        raise UnlearnflowError(f"shard {shard!r}: shard names are digits, like 00000")
    return int(shard)


def sample_key(shard: str, index: int, samples_per_shard: int) -> str:
    """img2dataset's key: shard id (5 digits) then the index in the shard."""
    digits = max(1, math.ceil(math.log10(max(samples_per_shard, 2))))
    return f"{shard_number(shard) * 10**digits + index:0{5 + digits}d}"


def iter_shard(spec: SyntheticSpec, shard: str):
    """Yield ``(index, image, caption, labels, rng)`` for every row of a shard."""
    looks = spec.looks
    sid = shard_number(shard)
    for i in range(spec.samples_per_shard):
        rng = np.random.default_rng([spec.seed, 1, sid, i])
        image, caption, labels = draw_sample(spec, looks, rng)
        yield i, image, caption, labels, rng


def write_shard(spec: SyntheticSpec, shard: str, parquet_out, tar_out, stats_out) -> dict:
    """Write one synthetic shard in the parquet + webdataset + stats formats."""
    start = time.time()
    size = spec.image_size
    rows, status = [], {"success": 0}
    failed = 0
    with ShardWriter(tar_out) as writer:
        for i, image, caption, _labels, rng in iter_shard(spec, shard):
            url = f"https://images.synthetic.invalid/laion/{shard}/{i:06d}.jpg"
            row = {
                "SAMPLE_ID": shard_number(shard) * 10_000_000 + i,
                "URL": url,
                "TEXT": caption,
                "HEIGHT": size,
                "WIDTH": size,
                "LICENSE": "?",
                "NSFW": "UNLIKELY",
                "similarity": float(np.round(rng.uniform(0.28, 0.42), 6)),
            }
            rows.append(row)
            if rng.random() < spec.failure_rate:
                reason = list(FAILURES)[int(rng.choice(len(FAILURES), p=list(FAILURES.values())))]
                status[reason] = status.get(reason, 0) + 1
                failed += 1
                continue
            jpg = encode_jpeg(image, spec.jpeg_quality)
            key = sample_key(shard, i, spec.samples_per_shard)
            meta = {
                **{c: row[c] for c in ADDITIONAL_COLUMNS},
                "url": url,
                "caption": caption,
                "key": key,
                "status": "success",
                "error_message": None,
                "width": size,
                "height": size,
                "original_width": size,
                "original_height": size,
                "exif": "{}",
                "sha256": hashlib.sha256(jpg).hexdigest(),
            }
            writer.write(Sample(key, {"jpg": jpg, "txt": caption, "json": json.dumps(meta, indent=4)}))
            status["success"] += 1
    df = pd.DataFrame(rows, columns=LAION_COLUMNS).astype(
        {"SAMPLE_ID": "int64", "HEIGHT": "int64", "WIDTH": "int64", "similarity": "float64"}
    )
    write_parquet(parquet_out, df)
    stats = {
        "count": len(rows),
        "successes": status["success"],
        "failed_to_download": failed,
        "failed_to_resize": 0,
        # durations are facts of this run; everything else is deterministic
        "duration": round(time.time() - start, 3),
        "start_time": start,
        "end_time": time.time(),
        "status_dict": status,
    }
    write_json(stats_out, stats)
    return stats


# -------------------------------------------------------------- eval sets
EVAL_SETS = ("identities", "objects", "styles")


def eval_samples(spec: SyntheticSpec, evalset: str, split: str, per_class: int):
    """Labelled held-out samples for one evaluation set and split. Split
    ``judge`` is the text-to-image judge's training stream (rule
    train_judge): its own random stream, so neither the shards the models
    train on nor the val / test pictures repeat in it."""
    looks = spec.looks
    split_id = {"val": 1, "test": 2, "judge": 3}[split]
    set_id = EVAL_SETS.index(evalset)
    if evalset == "identities":
        cells = [(i, name, None) for i, name in enumerate(spec.identities)]
    elif evalset == "objects":
        cells = [(i, name, None) for i, name in enumerate(spec.objects)]
    else:
        cells = [(si, s, o) for si, s in enumerate(spec.styles) for o in spec.objects]
    for cell, (label_index, label, obj) in enumerate(cells):
        for j in range(per_class):
            rng = np.random.default_rng([spec.seed, 2, set_id, split_id, cell, j])
            meta = {"label": label, "label_index": label_index, "split": split}
            if evalset == "identities":
                image = render.face_image(looks[label_index], spec.image_size, rng)
                text = label
                meta["kind"] = "identity"
            elif evalset == "objects":
                image = render.object_photo(spec.shape_of(label), spec.image_size, rng)
                text = f"a photo of a {label}"
                meta["kind"] = "object"
            else:
                image = render.styled_object(spec.shape_of(obj), spec.look_of(label), spec.image_size, rng)
                text = f"A {obj} image in {label} style."
                meta.update(kind="style", style=label, object=obj, object_index=spec.objects.index(obj))
            key = f"{evalset}_{split}_{cell:04d}_{j:05d}"
            yield Sample(
                key,
                {
                    "jpg": encode_jpeg(image, spec.jpeg_quality),
                    "txt": text,
                    "json": json.dumps(meta),
                    "cls": str(label_index),
                },
            )


def eval_classes(spec: SyntheticSpec, evalset: str) -> dict:
    if evalset == "identities":
        return {"kind": "identity", "classes": list(spec.identities)}
    if evalset == "objects":
        return {"kind": "object", "classes": list(spec.objects)}
    return {"kind": "style", "classes": list(spec.styles), "objects": list(spec.objects)}


def write_eval_set(spec: SyntheticSpec, evalset: str, per_class: dict, outputs: dict) -> dict:
    """Write ``{split}.tar`` for each split and ``classes.json``."""
    if evalset not in EVAL_SETS:
        raise UnlearnflowError(f"evaluation set {evalset!r} unknown; known: {EVAL_SETS}")
    counts = {}
    for split in ("val", "test"):
        with ShardWriter(outputs[split]) as w:
            for s in eval_samples(spec, evalset, split, int(per_class[split])):
                w.write(s)
            counts[split] = w.count
    info = eval_classes(spec, evalset) | {"counts": counts, "source": "synthetic"}
    write_json(outputs["classes"], info)
    return info


__all__ = [
    "SyntheticSpec",
    "write_shard",
    "write_eval_set",
    "eval_samples",
    "iter_shard",
    "sample_key",
    "LAION_COLUMNS",
]
