"""Ingest a user's real benchmark folders as labelled evaluation sets.

The output is the format that ``synthetic.write_eval_set`` writes, so real
data needs only a config change: ``val.tar`` and ``test.tar`` (webdataset
samples ``key.jpg``, ``key.txt``, ``key.json``, ``key.cls``) and
``classes.json`` (``kind``, ``classes``, ``objects`` for styles, ``counts``,
``source``).

Layouts (``layout=``):

- ``unlearncanvas``: ``{root}/{style}/{object}/{n}.jpg`` -> the ``styles`` set;
  the label is the style, ``objects`` are all object folders across styles.
- ``identity_folders``: ``{root}/{identity_name}/*.jpg`` -> ``identities``.
- ``celeba``: ``{root}/img_align_celeba/*.jpg`` and
  ``{root}/identity_CelebA.txt`` (``000001.jpg 2880``) -> ``identities``;
  names from ``identity_names.txt`` (or ``names_file``: ``2880 Some Name`` or
  CSV ``2880,Some Name``), otherwise the numeric id is the class name.
- ``imagenet``: ``{root}/{class}/*.JPEG`` -> ``objects``; optional names file
  such as ``LOC_synset_mapping.txt`` (``n01440764 tench, Tinca tinca`` ->
  ``tench``), found in ``{root}`` or given as ``names_file``.
- ``auto``: ``celeba`` if an ``identity_CelebA.txt`` is found, else
  ``identity_folders``.

Images (``.jpg``, ``.jpeg``, ``.png``, ``.webp``, any case) are centre-cropped
to a square, resized (bicubic) to ``image_size`` and re-encoded as RGB JPEG,
quality 95. Classes are filtered by ``min_images`` then ``top_k`` (the k
classes with most images), capped at ``max_per_class`` images, and split into
val/test per class by ``stable_hash(seed, relative_path)``: the split is the
same on every machine and every rerun gives byte-identical tars.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..io import InputFileError, UnlearnflowError, stable_hash, write_json
from .shards import Sample, ShardWriter

log = logging.getLogger(__name__)

LAYOUTS = ("unlearncanvas", "celeba", "identity_folders", "imagenet", "auto")
EVALSET_OF = {
    "unlearncanvas": "styles",
    "celeba": "identities",
    "identity_folders": "identities",
    "imagenet": "objects",
}
KIND_OF = {"styles": "style", "identities": "identity", "objects": "object"}
EXPECTED = {
    "unlearncanvas": "UnlearnCanvas layout ROOT/STYLE/OBJECT/N.jpg",
    "celeba": "CelebA layout ROOT/img_align_celeba/*.jpg with ROOT/identity_CelebA.txt",
    "identity_folders": "identity-folder layout ROOT/IDENTITY_NAME/*.jpg",
    "imagenet": "ImageNet layout ROOT/CLASS/*.JPEG",
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
JPEG_QUALITY = 95
SPLITS = ("val", "test")

CELEBA_IDENTITY_FILES = ("identity_CelebA.txt", "Anno/identity_CelebA.txt")
# the Kaggle copy nests the folder in itself; the Google Drive copy puts it under Img/
CELEBA_IMAGE_DIRS = (
    "img_align_celeba/img_align_celeba",
    "img_align_celeba",
    "Img/img_align_celeba",
)
CELEBA_NAMES_FILE = "identity_names.txt"
IMAGENET_NAMES_FILE = "LOC_synset_mapping.txt"


@dataclass(frozen=True)
class SourceImage:
    """One image file of the user's tree."""

    path: Path
    rel: str  # POSIX path relative to root: what the split hash sees
    cls: str  # class id: a folder name, or a CelebA identity number
    obj: str | None = None  # object folder (UnlearnCanvas only)


@dataclass
class Catalog:
    """Every image found under a root, grouped by class, before filtering."""

    layout: str
    root: Path
    class_ids: list[str]  # in label order
    images: dict[str, list[SourceImage]]
    names: dict[str, str] = field(default_factory=dict)  # id -> class name where it differs
    objects: list[str] = field(default_factory=list)
    names_file: str | None = None

    @property
    def evalset(self) -> str:
        return EVALSET_OF[self.layout]

    def name(self, cls: str) -> str:
        return self.names.get(cls, cls)


# ------------------------------------------------------------------ scanning
def _is_hidden(p: Path) -> bool:
    # also skips macOS "._x.jpg" resource forks, which are not images
    return p.name.startswith(".")


def _subdirs(path: Path) -> list[Path]:
    return sorted((p for p in path.iterdir() if p.is_dir() and not _is_hidden(p)), key=lambda p: p.name)


def _image_files(path: Path) -> list[Path]:
    return sorted(
        (p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not _is_hidden(p) and p.is_file()),
        key=lambda p: p.name,
    )


def _natural_key(text: str) -> list:
    # "2.jpg" before "10.jpg", so key numbers follow file numbers
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text)]


def _check_root(root: Path) -> None:
    if not root.exists():
        raise InputFileError(root, "dataset root not found")
    if not root.is_dir():
        raise InputFileError(root, "dataset root is not a directory")


def _no_images(root: Path, layout: str, hint: str = "") -> InputFileError:
    return InputFileError(root, f"no images found; expected the {EXPECTED[layout]}{hint}")


def scan_unlearncanvas(root: os.PathLike | str) -> Catalog:
    """``{root}/{style}/{object}/*.jpg``: classes are styles."""
    root = Path(root)
    _check_root(root)
    images: dict[str, list[SourceImage]] = {}
    empty: list[Path] = []
    stray = 0
    for sdir in _subdirs(root):
        images[sdir.name] = []
        stray += len(_image_files(sdir))
        odirs = _subdirs(sdir)
        if not odirs:
            empty.append(sdir)
        for odir in odirs:
            files = _image_files(odir)
            if not files:
                empty.append(odir)
            images[sdir.name] += [
                SourceImage(f, f.relative_to(root).as_posix(), sdir.name, odir.name) for f in files
            ]
    if not any(images.values()):
        hint = f" (found {stray} images directly in style folders, not in OBJECT subfolders)" if stray else ""
        raise _no_images(root, "unlearncanvas", hint)
    if empty:
        # a missing grid cell silently changes the benchmark; make the user decide
        raise InputFileError(empty[0], "no images in this folder; expected STYLE/OBJECT/N.jpg")
    if stray:
        log.warning("%s: %d images directly in style folders ignored (not in an OBJECT folder)", root, stray)
    objects = sorted({im.obj for ims in images.values() for im in ims})
    return Catalog("unlearncanvas", root, sorted(images), images, objects=objects)


def _scan_class_folders(root: Path, layout: str) -> tuple[list[str], dict[str, list[SourceImage]]]:
    _check_root(root)
    images = {
        d.name: [SourceImage(f, f.relative_to(root).as_posix(), d.name) for f in _image_files(d)]
        for d in _subdirs(root)
    }
    if not any(images.values()):
        raise _no_images(root, layout)
    for cls, ims in images.items():
        if not ims:
            # dropping it silently would shift every later label index
            raise InputFileError(root / cls, f"class folder has no images ({'/'.join(IMAGE_SUFFIXES)})")
    return sorted(images), images


def scan_identity_folders(root: os.PathLike | str) -> Catalog:
    """``{root}/{identity_name}/*.jpg``: the folder name is the identity."""
    root = Path(root)
    ids, images = _scan_class_folders(root, "identity_folders")
    return Catalog("identity_folders", root, ids, images)


def scan_imagenet(root: os.PathLike | str, names_file: os.PathLike | str | None = None) -> Catalog:
    """``{root}/{class}/*.JPEG``; names from ``names_file`` or ``{root}/LOC_synset_mapping.txt``."""
    root = Path(root)
    ids, images = _scan_class_folders(root, "imagenet")
    path = _names_path(root, names_file, (IMAGENET_NAMES_FILE,))
    names = {}
    if path is not None:
        mapping = read_names_file(path, first_synonym=True)
        names = {c: mapping[c] for c in ids if c in mapping}
        missing = [c for c in ids if c not in mapping]
        if missing:
            log.warning("%s: no name for %d classes (e.g. %s); using the folder name", path, len(missing), missing[0])
    return Catalog("imagenet", root, ids, images, names=names, names_file=None if path is None else str(path))


def find_celeba_identity_file(root: Path) -> Path | None:
    return next((root / c for c in CELEBA_IDENTITY_FILES if (root / c).is_file()), None)


def scan_celeba(root: os.PathLike | str, names_file: os.PathLike | str | None = None) -> Catalog:
    """CelebA: ``img_align_celeba/*.jpg`` labelled by ``identity_CelebA.txt``."""
    root = Path(root)
    _check_root(root)
    id_file = find_celeba_identity_file(root)
    img_dir = next((root / d for d in CELEBA_IMAGE_DIRS if (root / d).is_dir()), None)
    if id_file is None or img_dir is None:
        what = "identity_CelebA.txt" if id_file is None else "the img_align_celeba folder"
        raise _no_images(root, "celeba", f" ({what} not found)")
    present = {p.name: p for p in _image_files(img_dir)}
    images: dict[str, list[SourceImage]] = {}
    listed = missing = 0
    for lineno, fname, ident in _read_identity_file(id_file):
        listed += 1
        p = present.get(fname)
        if p is None:
            missing += 1
            continue
        images.setdefault(ident, []).append(SourceImage(p, p.relative_to(root).as_posix(), ident))
    if not images:
        raise _no_images(root, "celeba", f" (none of the {listed} images listed in {id_file} is in {img_dir})")
    if missing:
        # a partial download is usable; say so rather than fail
        log.warning("%s: %d of %d listed images are not in %s; ignored", id_file, missing, listed, img_dir)
    ids = sorted(images, key=_id_sort_key)
    path = _names_path(root, names_file, (CELEBA_NAMES_FILE,))
    names = {}
    if path is not None:
        mapping = {_norm_id(k): v for k, v in read_names_file(path).items()}
        names = {i: mapping[i] for i in ids if i in mapping}
    return Catalog("celeba", root, ids, images, names=names, names_file=None if path is None else str(path))


def _norm_id(text: str) -> str:
    return str(int(text)) if text.isdigit() else text


def _id_sort_key(cls: str):
    return (0, int(cls), "") if cls.isdigit() else (1, 0, cls)


def _read_identity_file(path: Path):
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(path, f"not readable ({exc})") from exc
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise InputFileError(path, f"line {lineno}: expected 'IMAGE IDENTITY', got {line!r}")
        yield lineno, parts[0], _norm_id(parts[1])


def _names_path(root: Path, names_file, defaults: tuple[str, ...]) -> Path | None:
    if names_file not in (None, ""):
        path = Path(names_file)
        if not path.is_file():
            raise InputFileError(path, "names file not found")
        return path
    return next((root / d for d in defaults if (root / d).is_file()), None)


def read_names_file(path: os.PathLike | str, first_synonym: bool = False) -> dict[str, str]:
    """``ID NAME`` or CSV ``ID,NAME`` lines -> ``{id: name}``.

    With ``first_synonym`` (ImageNet's ``n01440764 tench, Tinca tinca``) the
    name is the first of the comma-separated synonyms. Blank and ``#`` lines
    are skipped; a CSV header is harmless (its id matches no class).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(path, f"not a readable text file ({exc})") from exc
    names: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        ws = re.search(r"\s", line)
        comma = line.find(",")
        if comma >= 0 and (ws is None or comma < ws.start()):
            row = next(csv.reader([line]))
            key, name = row[0].strip(), (row[1].strip() if len(row) > 1 else "")
        elif ws is not None:
            key, name = line[: ws.start()], line[ws.start():].strip()
            if first_synonym:
                name = name.split(",")[0].strip()
        else:
            key, name = line, ""
        if not name:
            raise InputFileError(path, f"line {lineno}: expected 'ID NAME' or 'ID,NAME', got {line!r}")
        names[key] = name
    return names


def detect_layout(root: os.PathLike | str) -> str:
    """``celeba`` if an identity_CelebA.txt is found, else ``identity_folders``."""
    return "celeba" if find_celeba_identity_file(Path(root)) is not None else "identity_folders"


def scan(layout: str, root: os.PathLike | str, names_file: os.PathLike | str | None = None) -> Catalog:
    if layout == "auto":
        _check_root(Path(root))
        layout = detect_layout(root)
    if layout == "unlearncanvas":
        if names_file not in (None, ""):
            raise UnlearnflowError("names_file is not used by the unlearncanvas layout")
        return scan_unlearncanvas(root)
    if layout == "identity_folders":
        if names_file not in (None, ""):
            raise UnlearnflowError("names_file is not used by the identity_folders layout (folders are names)")
        return scan_identity_folders(root)
    if layout == "celeba":
        return scan_celeba(root, names_file)
    if layout == "imagenet":
        return scan_imagenet(root, names_file)
    raise UnlearnflowError(f"layout {layout!r} unknown; known: {', '.join(LAYOUTS)}")


# ------------------------------------------------------------------ planning
@dataclass(frozen=True)
class Planned:
    image: SourceImage
    split: str
    label_index: int
    object_index: int | None


def _interleave(images: list[SourceImage], hash_of) -> list[SourceImage]:
    """Order by hash within each object, then round-robin across objects.

    Taking a prefix of this order spreads a cap or a split evenly over an
    UnlearnCanvas style's objects; for other sets (one stratum) it is just
    the hash order.
    """
    by_obj: dict = {}
    for im in images:
        by_obj.setdefault(im.obj, []).append(im)
    keyed = []
    for ims in by_obj.values():
        ranked = sorted(ims, key=lambda im: (hash_of(im), im.rel))
        keyed += [((rank, hash_of(im), im.rel), im) for rank, im in enumerate(ranked)]
    return [im for _, im in sorted(keyed, key=lambda t: t[0])]


def _n_val(n: int, val_fraction: float, first_hash: int) -> int:
    if n >= 2:
        return min(n - 1, max(1, math.floor(n * val_fraction + 0.5)))
    # a lone image goes where its hash falls
    return 1 if first_hash / 2**64 < val_fraction else 0


def select_classes(cat: Catalog, min_images: int = 1, top_k: int | None = None) -> list[str]:
    """Class ids kept by ``min_images`` then ``top_k``, in label order."""
    kept = [c for c in cat.class_ids if len(cat.images[c]) >= min_images]
    if top_k is not None and len(kept) > top_k:
        # most images first; ties by label order, so the choice is deterministic
        pos = {c: i for i, c in enumerate(kept)}
        best = set(sorted(kept, key=lambda c: (-len(cat.images[c]), pos[c]))[:top_k])
        kept = [c for c in kept if c in best]
    if not kept:
        most = max(len(v) for v in cat.images.values())
        raise UnlearnflowError(
            f"{cat.root}: no class has at least min_images={min_images} images (the largest has {most})"
        )
    return kept


def plan(
    cat: Catalog,
    *,
    seed: int,
    val_fraction: float = 0.3,
    max_per_class: int | None = None,
    top_k: int | None = None,
    min_images: int = 1,
) -> tuple[list[str], list[Planned]]:
    """Kept class ids and every output image with its split, in output order."""
    kept = select_classes(cat, min_images, top_k)
    obj_index = {o: i for i, o in enumerate(cat.objects)}
    out: list[Planned] = []
    for label_index, cls in enumerate(kept):
        images = cat.images[cls]
        if max_per_class is not None and len(images) > max_per_class:
            images = _interleave(images, lambda im: stable_hash(seed, "keep", im.rel))[:max_per_class]
        if not images:
            raise UnlearnflowError(f"{cat.root}: class {cls!r} has no images after filtering")
        order = _interleave(images, lambda im: stable_hash(seed, im.rel))
        n_val = _n_val(len(order), val_fraction, stable_hash(seed, order[0].rel))
        val = {im.rel for im in order[:n_val]}
        for im in sorted(images, key=lambda im: (obj_index.get(im.obj, 0), _natural_key(im.rel))):
            out.append(Planned(im, "val" if im.rel in val else "test", label_index, obj_index.get(im.obj)))
    return kept, out


# ------------------------------------------------------------------- writing
def load_image(path: os.PathLike | str, image_size: int, quality: int = JPEG_QUALITY) -> bytes:
    """Centre crop to a square, bicubic resize, RGB JPEG bytes; names the file on failure."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P":
                im = im.convert("RGBA")  # PIL warns on palette transparency straight to RGB
            im = im.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputFileError(path, f"not a readable image ({exc})") from exc
    w, h = im.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    im = im.resize((image_size, image_size), Image.Resampling.BICUBIC, box=(left, top, left + s, top + s))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _readable(name: str) -> str:
    # folder names use underscores for spaces ("Van_Gogh"); captions are text
    return name.replace("_", " ")


def _unique_names(ids: list[str], names: list[str]) -> list[str]:
    # ImageNet's first synonyms repeat ("crane" is a bird and a machine)
    dup = {n for n in names if names.count(n) > 1}
    return [f"{n} ({i})" if n in dup else n for i, n in zip(ids, names)]


def ingest(
    layout: str,
    root: os.PathLike | str,
    outputs: dict,
    *,
    image_size: int,
    seed: int,
    val_fraction: float = 0.3,
    max_per_class: int | None = None,
    top_k: int | None = None,
    min_images: int = 1,
    names_file: os.PathLike | str | None = None,
    evalset: str | None = None,
    max_unreadable: float = 0.0,
    listing: str | None = None,
) -> dict:
    """Write ``outputs['val']``, ``outputs['test']`` and ``outputs['classes']``.

    ``evalset``, when given, is the set the tree is configured as: a layout
    that makes another kind of set (a styles tree as ``identities``) is an
    error. Unreadable image files are skipped and listed, up to a share of
    ``max_unreadable`` of all planned files; above it nothing is written.
    Returns the ``classes.json`` contents.
    """
    image_size, seed, min_images = int(image_size), int(seed), int(min_images)
    val_fraction = float(val_fraction)
    if image_size < 8:
        raise UnlearnflowError(f"image_size: {image_size} < 8")
    if not 0 < val_fraction < 1:
        raise UnlearnflowError(f"val_fraction: {val_fraction} is not strictly between 0 and 1")
    if min_images < 1:
        raise UnlearnflowError(f"min_images: {min_images} < 1")
    if max_per_class is not None and int(max_per_class) < 1:
        raise UnlearnflowError(f"max_per_class: {max_per_class} < 1")
    if top_k is not None and int(top_k) < 1:
        raise UnlearnflowError(f"top_k: {top_k} < 1")
    missing = [k for k in ("val", "test", "classes") if k not in outputs]
    if missing:
        raise UnlearnflowError(f"ingest: outputs {missing} not given")

    cat = scan(layout, root, names_file)
    if evalset is not None and cat.evalset != evalset:
        raise UnlearnflowError(
            f"config data.eval.{evalset}: {root} read as layout {cat.layout!r} ({EXPECTED[cat.layout]}) "
            f"is a tree of {cat.evalset}, not of {evalset}: configure it under data.eval.{cat.evalset}, "
            f"or give the layout of a {evalset} tree"
        )
    kept, planned = plan(
        cat,
        seed=seed,
        val_fraction=val_fraction,
        max_per_class=None if max_per_class is None else int(max_per_class),
        top_k=None if top_k is None else int(top_k),
        min_images=min_images,
    )
    evalset, kind = cat.evalset, KIND_OF[cat.evalset]
    classes = _unique_names(kept, [cat.name(c) for c in kept])
    n_obj = len(cat.objects)
    counts = dict.fromkeys(SPLITS, 0)
    j_of: dict[tuple[str, int], int] = {}
    unreadable: list[dict] = []
    allowed = int(float(max_unreadable) * len(planned))
    # both tars are open together: too many bad images leave neither behind
    with contextlib.ExitStack() as stack:
        writers = {s: stack.enter_context(ShardWriter(outputs[s])) for s in SPLITS}
        for p in planned:
            try:
                jpg = load_image(p.image.path, image_size)
            except InputFileError as exc:
                unreadable.append({"file": p.image.rel, "error": str(exc.__cause__ or exc)})
                if len(unreadable) > allowed:
                    first = ", ".join(u["file"] for u in unreadable[:5])
                    raise InputFileError(
                        p.image.path,
                        f"not a readable image; {len(unreadable)} unreadable of {len(planned)} files under "
                        f"{root} ({first}), more than max_unreadable={max_unreadable} allows "
                        f"({allowed}): fix or remove them, or raise data.eval.<set>.max_unreadable",
                    ) from exc
                continue
            label = classes[p.label_index]
            meta = {"label": label, "label_index": p.label_index, "split": p.split, "kind": kind}
            if kind == "style":
                cell = p.label_index * n_obj + p.object_index  # synthetic's style x object cell
                obj = cat.objects[p.object_index]
                text = f"A {_readable(obj)} image in {_readable(label)} style."
                meta.update(style=label, object=obj, object_index=p.object_index)
            else:
                cell = p.label_index
                text = _readable(label) if kind == "identity" else f"a photo of a {_readable(label)}"
            meta["file"] = p.image.rel  # provenance: which source file this is
            j = j_of.get((p.split, cell), 0)
            j_of[(p.split, cell)] = j + 1
            writers[p.split].write(
                Sample(
                    f"{evalset}_{p.split}_{cell:04d}_{j:05d}",
                    {
                        "jpg": jpg,
                        "txt": text,
                        "json": json.dumps(meta),
                        "cls": str(p.label_index),
                    },
                )
            )
            counts[p.split] += 1

    info: dict = {"kind": kind, "classes": classes}
    if kind == "style":
        info["objects"] = list(cat.objects)
    source = {
        "layout": cat.layout,
        "root": str(root),
        "image_size": image_size,
        "seed": seed,
        "val_fraction": val_fraction,
        "max_per_class": max_per_class,
        "top_k": top_k,
        "min_images": min_images,
        "names_file": cat.names_file,
        "listing": listing,
        "unreadable": len(unreadable),
        "unreadable_files": unreadable[:50],
    }
    if any(cat.name(c) != c for c in kept):
        source["class_ids"] = list(kept)  # e.g. CelebA identity numbers, ImageNet wnids
    info |= {"counts": counts, "source": source}
    write_json(outputs["classes"], info)
    return info


__all__ = [
    "LAYOUTS",
    "Catalog",
    "SourceImage",
    "scan",
    "scan_unlearncanvas",
    "scan_identity_folders",
    "scan_celeba",
    "scan_imagenet",
    "read_names_file",
    "detect_layout",
    "select_classes",
    "plan",
    "load_image",
    "ingest",
]
