"""File I/O shared by every stage: atomic writes and loaders that name the file.

Every output is first written to a temporary file in the destination's
directory and renamed into place only when complete, so a job killed
mid-write never leaves a file that a later run would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


_UMASK = os.umask(0)
os.umask(_UMASK)


class UnlearnflowError(RuntimeError):
    """An error the user can act on: bad input, bad config, missing data."""


class InputFileError(UnlearnflowError):
    """A file that is missing, truncated or not in the expected format."""

    def __init__(self, path: os.PathLike | str, problem: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {problem}{recovery_hint(self.path)}")


def make_readable(folder: os.PathLike | str) -> None:
    """Give every file under ``folder`` the umask's permissions (libraries
    such as safetensors write owner-only 0600 files)."""
    for path in Path(folder).rglob("*"):
        if path.is_file():
            os.chmod(path, 0o666 & ~_UMASK)


def recovery_hint(path: str) -> str:
    """How to recover from a damaged file that the pipeline made (under
    ``results/``): remove it, and Snakemake remakes it and what depends on it."""
    parts = Path(path).parts
    if "results" not in parts or not os.path.exists(path):
        return ""
    return (
        f" (made by this pipeline: delete it, `rm {path}`, and rerun snakemake, which remakes it "
        f"and everything that depends on it)"
    )


@contextlib.contextmanager
def atomic_path(dest: os.PathLike | str, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it to ``dest`` on success.

    On an exception the temporary file is removed and ``dest`` is left as it
    was (absent, or the previous complete version).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{dest.name}.", suffix=suffix or ".tmp", dir=dest.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are ordinary files
    try:
        yield tmp_path
        if not tmp_path.exists():
            raise UnlearnflowError(f"{dest}: nothing was written")
        # again: writers such as safetensors replace the file with their own
        # 0600 temp file
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_bytes(dest: os.PathLike | str, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_json(dest: os.PathLike | str, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"
    write_bytes(dest, text.encode())


def _json_default(obj: Any) -> Any:
    # numpy scalars and paths appear in summaries
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: os.PathLike | str) -> Any:
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputFileError(path, f"not valid JSON ({exc})") from exc


def write_parquet(dest: os.PathLike | str, table) -> None:
    """Write a pandas DataFrame or pyarrow Table atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with atomic_path(dest, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)


def read_parquet(path: os.PathLike | str, columns: list[str] | None = None):
    """Read a parquet file into pandas, naming the file on any failure."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "file not found")
    try:
        names = pq.read_schema(path).names
        missing = [c for c in columns or [] if c not in names]
        if missing:
            raise InputFileError(path, f"missing columns {missing}; has {names}")
        table = pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
        raise InputFileError(path, f"not a readable parquet file ({exc})") from exc
    return table.to_pandas()



def save_tensors(dest: os.PathLike | str, tensors: dict, metadata: dict) -> None:
    """Tensors as safetensors, atomically; metadata values become strings."""
    from safetensors.torch import save_file

    meta = {k: str(v) for k, v in metadata.items()}
    with atomic_path(dest, suffix=".safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)


def load_tensors(path: os.PathLike | str, fmt: str | None = None, what: str = "an unlearnflow") -> tuple[dict, dict]:
    """Every tensor and the metadata of a safetensors file (never pickle).

    ``fmt``: the ``format`` the metadata must declare, so that e.g. a mask
    file given where a gradient file belongs is an error naming the file.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise InputFileError(path, f"not a readable safetensors file ({exc})") from exc
    if fmt is not None and meta.get("format") != fmt:
        raise InputFileError(path, f"not {what} file (format {meta.get('format')!r}, expected {fmt!r})")
    return tensors, meta


def sha256_file(path: os.PathLike | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def stable_hash(*parts: Any) -> int:
    """A 64-bit hash of its arguments that is the same in every process."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
