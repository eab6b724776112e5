"""Webdataset tar shards: deterministic writing and strict reading.

The layout is the one img2dataset writes with ``--output_format webdataset``:
consecutive members ``{key}.jpg``, ``{key}.txt`` (caption) and ``{key}.json``
(metadata) per sample. Keys never contain a dot; the extension is everything
after the first dot of the member's base name (webdataset's convention).

Writing is byte-for-byte deterministic (fixed mtime, owner and mode), so the
same samples always give the same tar, and atomic (see ``io.atomic_path``).
Reading checks the end-of-archive marker, so a tar cut at a member boundary is
reported as truncated instead of silently yielding fewer samples.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from ..io import InputFileError, atomic_path

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


@dataclass
class Sample:
    """One webdataset sample: a key and its files by extension."""

    key: str
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def caption(self) -> str:
        return self.files.get("txt", b"").decode("utf-8")

    @property
    def meta(self) -> dict:
        raw = self.files.get("json")
        return json.loads(raw) if raw else {}

    @property
    def image_bytes(self) -> bytes:
        for ext in IMAGE_EXTS:
            if ext in self.files:
                return self.files[ext]
        raise KeyError(f"sample {self.key} has no image ({sorted(self.files)})")

    def image(self):
        from PIL import Image

        return Image.open(io.BytesIO(self.image_bytes)).convert("RGB")


def split_member_name(name: str) -> tuple[str, str]:
    """``'dir/000010002.jpg'`` -> ``('dir/000010002', 'jpg')``."""
    head, base = os.path.split(name)
    if "." not in base:
        return name, ""
    stem, ext = base.split(".", 1)
    return (f"{head}/{stem}" if head else stem), ext


class ShardWriter:
    """Write samples to a tar atomically and deterministically.

    >>> with ShardWriter("out.tar") as w:
    ...     w.write(Sample("000000000", {"jpg": b"...", "txt": b"a cat"}))
    """

    # img2dataset writes image, caption, metadata in this order
    ORDER = {"jpg": 0, "jpeg": 0, "png": 0, "webp": 0, "txt": 1, "json": 2, "cls": 3}

    def __init__(self, path: os.PathLike | str):
        self.path = Path(path)
        self.count = 0
        self._keys: set[str] = set()

    def __enter__(self) -> "ShardWriter":
        self._atomic = atomic_path(self.path, suffix=".tar")
        tmp = self._atomic.__enter__()
        self._tar = tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT)
        return self

    def write(self, sample: Sample) -> None:
        if "." in sample.key:
            raise ValueError(f"{self.path}: sample key {sample.key!r} contains a dot")
        if sample.key in self._keys:
            raise ValueError(f"{self.path}: duplicate sample key {sample.key!r}")
        self._keys.add(sample.key)
        for ext in sorted(sample.files, key=lambda e: (self.ORDER.get(e, 9), e)):
            data = sample.files[ext]
            if isinstance(data, str):
                data = data.encode("utf-8")
            info = tarfile.TarInfo(f"{sample.key}.{ext}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._tar.close()
        return self._atomic.__exit__(exc_type, exc, tb)


def write_shard(path: os.PathLike | str, samples: Iterable[Sample]) -> int:
    with ShardWriter(path) as w:
        for s in samples:
            w.write(s)
        return w.count


def _open_tar(path: Path) -> tarfile.TarFile:
    if not path.exists():
        raise InputFileError(path, "file not found")
    if path.stat().st_size == 0:
        raise InputFileError(path, "empty file (0 bytes), not a tar")
    try:
        return tarfile.open(path, "r:")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InputFileError(path, f"not a readable tar file ({exc})") from exc


def _check_end_marker(path: Path, tf: tarfile.TarFile) -> None:
    # A complete tar ends with two 512-byte zero blocks after the last member.
    end = tf.offset
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(end)
        tail = f.read(1024)
    if len(tail) < 1024 or any(tail):
        raise InputFileError(
            path,
            f"truncated tar: no end-of-archive marker after byte {end} of {size}",
        )


def iter_members(
    path: os.PathLike | str, exts: Iterable[str] | None = None
) -> Iterator[tuple[str, str, bytes | None]]:
    """Yield ``(key, ext, data)`` for every file member, in tar order.

    ``data`` is None for extensions not in ``exts`` (their bytes are skipped,
    not read), so a caption scan does not read the images.
    """
    path = Path(path)
    wanted = None if exts is None else set(exts)
    tf = _open_tar(path)
    try:
        with tf:
            for info in tf:
                if not info.isfile():
                    continue
                key, ext = split_member_name(info.name)
                data = None
                if wanted is None or ext in wanted:
                    fobj = tf.extractfile(info)
                    data = fobj.read() if fobj is not None else b""
                    if len(data) != info.size:
                        raise InputFileError(path, f"truncated member {info.name}")
                yield key, ext, data
            _check_end_marker(path, tf)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InputFileError(path, f"corrupt or truncated tar ({exc})") from exc


def iter_samples(
    path: os.PathLike | str, exts: Iterable[str] | None = None
) -> Iterator[Sample]:
    """Group consecutive members by key into samples (webdataset's rule)."""
    current: Sample | None = None
    for key, ext, data in iter_members(path, exts):
        if current is None or key != current.key:
            if current is not None:
                yield current
            current = Sample(key)
        if data is not None:
            current.files[ext] = data
    if current is not None:
        yield current


def read_captions(path: os.PathLike | str) -> list[tuple[str, str]]:
    """``[(key, caption)]`` of every sample, reading only the .txt members."""
    return [(s.key, s.caption) for s in iter_samples(path, exts=("txt",))]


def count_samples(path: os.PathLike | str) -> int:
    return sum(1 for _ in iter_samples(path, exts=()))
