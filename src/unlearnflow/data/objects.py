"""Class-labelled object pictures for the image-to-image branch.

The embedded default's ImageNet: every object of ``data.synthetic.objects``
drawn as a photo (``render.object_photo``: its silhouette in its
characteristic colour on a muted background), ``train`` and ``test``
pictures per class from separate random streams. Two stages:

- ``i2i_images`` writes ``train.tar`` and ``test.tar`` (webdataset, PNG,
  lossless so that ground truth is exact) and ``classes.json``;
- ``i2i_sets`` splits them by class into the forget set (training pictures
  of the forget classes), the retain set (of the retain classes), the
  held-out ``test_forget`` / ``test_retain`` sets, and draws the **proxy**
  retain set: pictures from another pool (faces of the synthetic
  identities, retain-class objects in the synthetic styles, or scenes), for
  the paper's variant without access to the real retain data.

Forget and retain classes must be disjoint, non-empty subsets of the
objects; an error names the key and the value.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
from PIL import Image

from ..io import UnlearnflowError, read_json, write_json
from ..targets import check_split
from . import render
from .shards import Sample, ShardWriter, iter_samples
from .synthetic import SyntheticSpec

SPLITS = {"train": 1, "test": 2}
POOLS = ("identities", "styles", "scenes")
STREAM = 7  # this module's random stream (synthetic.py uses 1 and 2)


def encode_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def object_samples(spec: SyntheticSpec, split: str, per_class: int):
    """``per_class`` photos of every object, labelled by class."""
    split_id = SPLITS[split]
    for ci, obj in enumerate(spec.objects):
        for j in range(per_class):
            rng = np.random.default_rng([spec.seed, STREAM, split_id, ci, j])
            image = render.object_photo(spec.shape_of(obj), spec.image_size, rng)
            meta = {"label": obj, "label_index": ci, "split": split, "kind": "object"}
            yield Sample(
                f"i2i_{split}_{ci:03d}_{j:05d}",
                {"png": encode_png(image), "txt": f"a photo of a {obj}", "json": json.dumps(meta), "cls": str(ci)},
            )


def proxy_samples(spec: SyntheticSpec, pool: str, n: int, retain_classes):
    """``n`` pictures of another pool, none of a forget class."""
    if pool not in POOLS:
        raise UnlearnflowError(f"i2i.data.proxy_pool: {pool!r} unknown; known pools: {POOLS}")
    looks = spec.looks if pool == "identities" else None
    for j in range(n):
        rng = np.random.default_rng([spec.seed, STREAM, 3, POOLS.index(pool), j])
        if pool == "identities":
            i = j % len(spec.identities)
            image = render.face_image(looks[i], spec.image_size, rng)
            meta = {"label": spec.identities[i], "kind": "identity"}
        elif pool == "styles":
            style = spec.styles[j % len(spec.styles)]
            obj = retain_classes[(j // len(spec.styles)) % len(retain_classes)]
            image = render.styled_object(spec.shape_of(obj), spec.look_of(style), spec.image_size, rng)
            meta = {"label": f"{obj} / {style}", "kind": "style"}
        else:
            image = render.scene_image(spec.image_size, rng)
            meta = {"label": "scene", "kind": "none"}
        yield Sample(f"i2i_proxy_{j:05d}", {"png": encode_png(image), "txt": meta["label"], "json": json.dumps(meta | {"split": "proxy"})})


def write_images(spec: SyntheticSpec, per_class: dict, out: dict) -> dict:
    counts = {}
    for split in SPLITS:
        with ShardWriter(out[split]) as w:
            for s in object_samples(spec, split, int(per_class[split])):
                w.write(s)
            counts[split] = w.count
    info = {"kind": "object", "classes": list(spec.objects), "counts": counts, "source": "synthetic"}
    write_json(out["classes"], info)
    return info


def split_sets(
    inp: dict,
    out: dict,
    spec: SyntheticSpec | None,
    forget_classes,
    retain_classes,
    proxy: dict,
    per_class: int | None = None,
) -> dict:
    """Write forget/retain/test_forget/test_retain (by class) and the proxy set.

    ``per_class``: the forget and retain sets take the first that many
    training pictures of each class (the paper unlearns with 120 per class
    of a model trained on more); None takes them all. Test sets are whole.
    """
    classes = read_json(inp["classes"])["classes"]
    check_split(classes, forget_classes, retain_classes)
    if per_class is not None and int(per_class) < 1:
        raise UnlearnflowError(f"i2i.data.unlearn_per_class: {per_class} < 1")
    counts = {}
    for source, names in (("train", ("forget", "retain")), ("test", ("test_forget", "test_retain"))):
        wanted = {names[0]: set(forget_classes), names[1]: set(retain_classes)}
        cap = int(per_class) if source == "train" and per_class is not None else None
        taken: dict = {}
        with contextlib.ExitStack() as stack:  # an error removes every half-written tar
            writers = {name: stack.enter_context(ShardWriter(out[name])) for name in names}
            for s in iter_samples(inp[source]):
                label = s.meta.get("label")
                if cap is not None and taken.get(label, 0) >= cap:
                    continue
                for name, keep in wanted.items():
                    if label in keep:
                        writers[name].write(s)
                        taken[label] = taken.get(label, 0) + 1
            for name, w in writers.items():
                if not w.count:
                    raise UnlearnflowError(f"{inp[source]}: no pictures of the {name} classes {sorted(wanted[name])}")
                counts[name] = w.count
    if spec is None:
        raise UnlearnflowError("i2i proxy set: the synthetic spec is needed to draw the proxy pool")
    with ShardWriter(out["proxy"]) as w:
        for s in proxy_samples(spec, proxy["pool"], int(proxy["size"]), list(retain_classes)):
            w.write(s)
        counts["proxy"] = w.count
    summary = {
        "forget_classes": list(forget_classes),
        "retain_classes": list(retain_classes),
        "proxy_pool": proxy["pool"],
        "unlearn_per_class": per_class,
        "counts": counts,
    }
    write_json(out["summary"], summary)
    return summary
