"""The real LAION path: metadata over HTTP, images through img2dataset.

Three stages (rules ``laion_metadata``, ``laion_shard_metadata``, ``laion_images``
in :mod:`unlearnflow.stages.data`), each a function of files to files:

1. ``laion_metadata`` downloads one LAION metadata parquet (e.g. a
   LAION-400M ``part-000NN-....snappy.parquet``, about 1 GB) with
   :func:`download_file`: streamed to ``dest.part``, resumed with an HTTP
   ``Range`` request after an interruption, retried with exponential backoff,
   checked against the expected size and sha256, and only then renamed to
   ``dest``. A killed job leaves a ``.part`` that the next run resumes, never a
   half ``dest``.
2. ``laion_shard_metadata`` cuts shard ``k`` (rows ``[k*N, (k+1)*N)``) out of
   that parquet with :func:`shard_metadata`, reading row groups in batches so
   the whole file is never in memory. This is the row range img2dataset would
   have put in shard ``k`` with ``--number_sample_per_shard N``.
3. ``laion_images`` fetches the shard's images with img2dataset
   (:func:`fetch_images`) into a private temporary folder, then rewrites the
   single tar img2dataset made (always ``00000.tar``, keys from ``00000``)
   under the keys img2dataset would have given had it processed the whole
   part: shard id, then the index in the shard (``synthetic.sample_key``).
   Samples are written in index order by :class:`shards.ShardWriter`, so the
   tar is deterministic although img2dataset writes in download-completion
   order. img2dataset's ``00000_stats.json`` is kept as ``{shard}_stats.json``.

The synthetic benchmark (``synthetic.py``) writes the same three formats
offline; everything downstream reads either without knowing which.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from ..io import InputFileError, UnlearnflowError, sha256_file, write_json, write_parquet
from .shards import Sample, ShardWriter, iter_samples, split_member_name
from .synthetic import ADDITIONAL_COLUMNS, sample_key, shard_number

log = logging.getLogger(__name__)

# Longest wait between two attempts, whatever the backoff or Retry-After says.
MAX_BACKOFF_S = 60.0


# --------------------------------------------------------------- download
class _Transient(Exception):
    """A failure worth another attempt (network, truncation, 5xx, 429)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def _retry_after(resp) -> float | None:
    value = resp.headers.get("Retry-After", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date, or absent: use our own backoff


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def _parse_content_range(value: str | None) -> tuple[int, int | None] | None:
    """``'bytes 100-199/1000'`` -> ``(100, 1000)``; total None when ``*``."""
    if not value:
        return None
    m = _CONTENT_RANGE.match(value.strip())
    if not m:
        return None
    return int(m.group(1)), (None if m.group(3) == "*" else int(m.group(3)))


def _unsatisfied_total(value: str | None) -> int | None:
    """The total size a 416 reports in ``Content-Range: bytes */N``."""
    m = re.match(r"bytes\s+\*/(\d+)", (value or "").strip())
    return int(m.group(1)) if m else None


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def download_file(
    url: str,
    dest: os.PathLike | str,
    *,
    sha256: str | None = None,
    size: int | None = None,
    retries: int = 5,
    backoff: float = 0.5,
    timeout: float = 60,
    chunk_size: int = 1 << 20,
    progress: bool = True,
    check: Callable[[Path], None] | None = None,
) -> dict:
    """Download ``url`` to ``dest`` resumably; return what was fetched.

    Bytes go to ``dest + ".part"``; an existing ``.part`` (from an earlier,
    interrupted run or attempt) is resumed with ``Range: bytes=N-``. A server
    that ignores the range (answers 200) restarts the file from byte 0; a 416
    means the part is already complete (checked against the total the server
    or ``size`` gives). Connection errors, timeouts, truncated bodies, 5xx and
    429 are retried with exponential backoff (``backoff * 2**k`` seconds, or the
    server's Retry-After); ``retries`` counts consecutive failed attempts, and
    an attempt that brings bytes never had before starts the count again, so a
    large file over a flaky link still completes. Other 4xx fail at once.

    The expected size is ``size``, else the total the server announces; the
    sha256 is checked when given; ``check`` (if given) is called on the
    complete ``.part`` and may raise to reject its content. On any mismatch
    the ``.part`` is deleted and :class:`UnlearnflowError` raised. Only a
    verified file is renamed to ``dest`` (``os.replace``, atomic), so ``dest``
    is never partial.

    Returns ``{"url", "dest", "bytes", "sha256", "attempts", "resumed_from"}``
    where ``resumed_from`` is the byte offset the completing request started
    at (0 for a download in one go).
    """
    import requests
    from tqdm import tqdm

    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    expected_sha = sha256.lower() if sha256 else None
    total: int | None = int(size) if size is not None else None

    attempts = 0
    failures = 0  # consecutive attempts that brought no new bytes
    high_water = part.stat().st_size if part.exists() else 0
    last_error = ""
    resumed_from = 0
    bar = tqdm(
        total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
        file=sys.stderr, disable=not progress, leave=False,
    )
    # identity: byte offsets of Range and Content-Length must be those of the file
    session = requests.Session()
    session.headers.update({"Accept-Encoding": "identity", "User-Agent": "unlearnflow"})
    try:
        while True:
            attempts += 1
            have = part.stat().st_size if part.exists() else 0
            try:
                total, resumed_from = _attempt(session, url, part, have, total, timeout, chunk_size, bar)
                break
            except _Transient as exc:
                last_error = str(exc)
                now = part.stat().st_size if part.exists() else 0
                if now > high_water:
                    high_water, failures = now, 0  # progress: a fresh budget of retries
                failures += 1
                if failures > retries:
                    raise UnlearnflowError(
                        f"{url}: download to {dest} failed after {attempts} attempts "
                        f"({failures - 1} retries without progress): {last_error}; "
                        f"{now} bytes are kept in {part} and the next run resumes from there"
                    ) from None
                delay = exc.retry_after if exc.retry_after is not None else backoff * 2 ** (failures - 1)
                time.sleep(min(delay, MAX_BACKOFF_S))
            except _SizeMismatch as exc:
                _remove(part)
                raise UnlearnflowError(
                    f"{url}: size mismatch for {dest}: expected {exc.expected} bytes, "
                    f"got {exc.actual}; the partial file was deleted"
                ) from None
    finally:
        bar.close()
        session.close()

    nbytes = part.stat().st_size
    if total is not None and nbytes != total:
        _remove(part)
        raise UnlearnflowError(
            f"{url}: size mismatch for {dest}: expected {total} bytes, got {nbytes}; "
            "the partial file was deleted"
        )
    digest = sha256_file(part)
    if expected_sha is not None and digest != expected_sha:
        _remove(part)
        raise UnlearnflowError(
            f"{url}: sha256 mismatch for {dest}: expected {expected_sha}, got {digest}; "
            "the downloaded file was deleted"
        )
    if check is not None:
        try:
            check(part)
        except BaseException:
            _remove(part)  # complete but unusable (e.g. an HTML error page): resuming cannot help
            raise
    os.replace(part, dest)
    return {
        "url": url,
        "dest": str(dest),
        "bytes": nbytes,
        "sha256": digest,
        "attempts": attempts,
        "resumed_from": resumed_from,
    }


class _SizeMismatch(Exception):
    def __init__(self, expected: int, actual: int):
        super().__init__(f"expected {expected} bytes, got {actual}")
        self.expected, self.actual = expected, actual


def _attempt(session, url, part: Path, have: int, total, timeout, chunk_size, bar):
    """One request that completes ``part`` or raises.

    Returns ``(total bytes, offset this request started at)``. Failures worth
    another attempt raise :class:`_Transient`, a body longer than announced
    :class:`_SizeMismatch`, a client error :class:`UnlearnflowError`.
    """
    import requests

    headers = {"Range": f"bytes={have}-"} if have > 0 else {}
    try:
        resp = session.get(url, headers=headers, stream=True, timeout=timeout)
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise _Transient(f"{type(exc).__name__}: {exc}") from None
    except requests.RequestException as exc:  # bad URL, redirect loop: retrying cannot help
        raise UnlearnflowError(f"{url}: {type(exc).__name__}: {exc}") from None
    with resp:
        status = resp.status_code
        if status == 416 and have > 0:
            # Nothing left to send: complete, unless the part is longer than the file.
            server_total = _unsatisfied_total(resp.headers.get("Content-Range"))
            known = total if total is not None else server_total
            if known is None or have == known:
                return (known if known is not None else have), have
            if have > known:
                _remove(part)  # not a prefix of this file: start over
                raise _Transient(f"HTTP 416: part has {have} bytes but the file has {known}")
            raise _Transient(f"HTTP 416 for bytes={have}- of a {known}-byte file")
        if status == 429 or status >= 500:
            raise _Transient(f"HTTP {status} {resp.reason}", _retry_after(resp))
        if status >= 400:
            raise UnlearnflowError(
                f"{url}: HTTP {status} {resp.reason} (a client error, not retried)"
            )
        if status == 206:
            cr = _parse_content_range(resp.headers.get("Content-Range"))
            if cr is None or cr[0] != have:
                # A range we did not ask for: we cannot splice it, start over.
                _remove(part)
                raise _Transient(f"HTTP 206 with unexpected Content-Range {resp.headers.get('Content-Range')!r}")
            start, server_total = cr
            mode = "ab"
        elif 200 <= status < 300:
            # Range ignored (or none sent): the body is the whole file from byte 0.
            start = 0
            length = resp.headers.get("Content-Length")
            server_total = int(length) if length and length.isdigit() else None
            mode = "wb"
        else:
            raise UnlearnflowError(f"{url}: unexpected HTTP {status} {resp.reason}")

        if total is not None and server_total is not None and server_total != total:
            raise _SizeMismatch(total, server_total)
        expected_total = total if total is not None else server_total
        bar.reset(total=expected_total)
        bar.update(start)
        written = start
        try:
            with open(part, mode) as f:
                for chunk in resp.iter_content(chunk_size=chunk_size):
                    f.write(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
                    if expected_total is not None and written > expected_total:
                        raise _SizeMismatch(expected_total, written)
                f.flush()
                os.fsync(f.fileno())
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            raise _Transient(f"connection lost after {written} bytes: {type(exc).__name__}: {exc}") from None
        if expected_total is not None and written < expected_total:
            raise _Transient(f"body ended after {written} of {expected_total} bytes")
        return (expected_total if expected_total is not None else written), start


def check_parquet(path: os.PathLike | str) -> int:
    """Raise :class:`InputFileError` unless ``path`` is a readable parquet; return its rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with pq.ParquetFile(path) as pf:
            return pf.metadata.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise InputFileError(path, f"not a readable parquet file ({exc})") from exc


# ------------------------------------------------------- shard metadata
def _open_parquet(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.exists():
        raise InputFileError(path, "file not found")
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputFileError(path, f"not a readable parquet file ({exc})") from exc


def _require(path: Path, names: list[str], wanted: dict[str, str]) -> None:
    missing = [f"{what} {col!r}" for what, col in wanted.items() if col not in names]
    if missing:
        raise InputFileError(path, f"missing {', '.join(missing)}; the file has columns {names}")


def shard_metadata(
    metadata_path: os.PathLike | str,
    shard: str,
    samples_per_shard: int,
    out_path: os.PathLike | str,
    url_col: str = "URL",
    caption_col: str = "TEXT",
) -> int:
    """Write rows ``[k*N, (k+1)*N)`` of the metadata parquet (``k = int(shard)``,
    all columns) to ``out_path``; return the number of rows written."""
    import pyarrow as pa

    path = Path(metadata_path)
    k = shard_number(shard)
    n = int(samples_per_shard)
    if n <= 0:
        raise UnlearnflowError(f"samples_per_shard must be positive, got {samples_per_shard}")
    pf = _open_parquet(path)
    try:
        schema = pf.schema_arrow
        _require(path, schema.names, {"url column": url_col, "caption column": caption_col})
        rows = pf.metadata.num_rows
        begin, end = k * n, min((k + 1) * n, rows)
        if begin >= rows:
            last = max(0, (rows - 1) // n)
            raise InputFileError(
                path,
                f"shard {shard} would start at row {begin} but the file has only {rows} rows "
                f"(shards 00000..{last:05d} at {n} samples per shard): list only those in config "
                f"data.shards and data.heldout_shards (with one part and no held-out shard, set "
                f"data.heldout_shards: [] and data.heldout_fraction), or lower data.laion.samples_per_shard",
            )
        # Read only the row groups that overlap [begin, end), a batch at a time.
        groups, offsets, pos = [], [], 0
        for g in range(pf.metadata.num_row_groups):
            g_rows = pf.metadata.row_group(g).num_rows
            if pos < end and pos + g_rows > begin:
                groups.append(g)
                offsets.append(pos)
            pos += g_rows
        batches, pos = [], offsets[0]
        try:
            for batch in pf.iter_batches(batch_size=65536, row_groups=groups):
                lo, hi = max(begin - pos, 0), min(end - pos, batch.num_rows)
                if hi > lo:
                    batches.append(batch.slice(lo, hi - lo))
                pos += batch.num_rows
                if pos >= end:
                    break
        except (pa.ArrowException, OSError) as exc:
            raise InputFileError(path, f"corrupt parquet data ({exc})") from exc
    finally:
        pf.close()
    table = pa.Table.from_batches(batches, schema=schema)
    if table.num_rows != end - begin:
        raise InputFileError(path, f"read {table.num_rows} rows for shard {shard}, expected {end - begin}")
    write_parquet(out_path, table)
    return table.num_rows


# ---------------------------------------------------------------- images
@contextlib.contextmanager
def _img2dataset_env():
    """Environment and signal state img2dataset needs, restored afterwards.

    NO_ALBUMENTATIONS_UPDATE stops albumentations from checking PyPI for a
    newer version in every spawned worker. img2dataset installs a SIGINT
    handler that calls ``sys.exit(0)``: left in place, a later Ctrl-C would
    end the process with status 0, so the previous handler is put back.

    img2dataset's workers are started with "spawn", which re-runs a main
    *script* (``python file.py``, as Snakemake runs ``workflow/scripts/stage.py``)
    in every worker. A script without an ``if __name__ == "__main__"`` guard
    would start the stage again there, and the pool hangs on workers that die
    while bootstrapping. The workers need nothing from ``__main__`` (they
    unpickle img2dataset's own classes), so its ``__file__`` is hidden while
    img2dataset runs. (``python -m pkg`` mains are imported by name and
    ``*.__main__`` modules are skipped by multiprocessing already.)
    """
    old_env = os.environ.get("NO_ALBUMENTATIONS_UPDATE")
    os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
    main_thread = threading.current_thread() is threading.main_thread()
    old_sigint = signal.getsignal(signal.SIGINT) if main_thread else None
    main = sys.modules.get("__main__")
    main_file = None
    if main is not None and getattr(main, "__spec__", None) is None and hasattr(main, "__file__"):
        main_file = main.__file__
        del main.__file__
    try:
        yield
    finally:
        if main_file is not None:
            main.__file__ = main_file
        if old_env is None:
            os.environ.pop("NO_ALBUMENTATIONS_UPDATE", None)
        else:
            os.environ["NO_ALBUMENTATIONS_UPDATE"] = old_env
        if main_thread and old_sigint is not None:
            signal.signal(signal.SIGINT, old_sigint)


def _failure_summary(status_dict: dict, k: int = 3) -> str:
    reasons = collections.Counter({r: c for r, c in status_dict.items() if r != "success"})
    if not reasons:
        return "no failure reasons recorded"
    return "; ".join(f"{c} x {r}" for r, c in reasons.most_common(k))


def _rekey_tar(src: Path, dest: Path, shard: str, samples_per_shard: int) -> int:
    """Copy img2dataset's tar to ``dest`` with keys ``sample_key(shard, i, N)``,
    in index order, one sample's members in memory at a time."""
    # strict pass first: a truncated tar is an error, not fewer samples
    keys = [s.key for s in iter_samples(src, exts=())]
    members: dict[str, list[tarfile.TarInfo]] = collections.defaultdict(list)
    with tarfile.open(src, "r:") as tf:
        for info in tf.getmembers():
            if info.isfile():
                members[split_member_name(info.name)[0]].append(info)
        # img2dataset's key is its shard (0) times 10**digits plus the row index
        order = sorted(keys, key=int)
        with ShardWriter(dest) as writer:
            for old in order:
                index = int(old)
                if index >= samples_per_shard:
                    raise UnlearnflowError(
                        f"{src}: sample {old} is beyond {samples_per_shard} samples per shard"
                    )
                new = sample_key(shard, index, samples_per_shard)
                files = {}
                for info in members[old]:
                    files[split_member_name(info.name)[1]] = tf.extractfile(info).read()
                if "json" in files:
                    meta = json.loads(files["json"])
                    meta["key"] = new
                    files["json"] = json.dumps(meta, indent=4).encode()
                writer.write(Sample(new, files))
            return writer.count


def fetch_images(
    shard_parquet: os.PathLike | str,
    shard: str,
    tar_out: os.PathLike | str,
    stats_out: os.PathLike | str,
    *,
    image_size: int = 256,
    url_col: str = "URL",
    caption_col: str = "TEXT",
    additional_columns: Iterable[str] = tuple(ADDITIONAL_COLUMNS),
    processes: int = 1,
    threads: int = 16,
    timeout: int = 10,
    retries: int = 0,
    resize_mode: str = "border",
    encode_quality: int = 95,
    samples_per_shard: int | None = None,
) -> dict:
    """Download the images of one shard parquet with img2dataset.

    Writes ``tar_out`` (webdataset, keys ``sample_key(shard, i, N)`` with
    ``N = samples_per_shard`` or the parquet's row count) and ``stats_out``
    (img2dataset's stats plus ``"shard"``); returns the stats. Failed URLs are
    counted in the stats; a shard with no image at all is an error.
    """
    path = Path(shard_parquet)
    tar_out, stats_out = Path(tar_out), Path(stats_out)
    shard_number(shard)
    pf = _open_parquet(path)
    try:
        names = pf.schema_arrow.names
        rows = pf.metadata.num_rows
    finally:
        pf.close()
    _require(path, names, {"url column": url_col, "caption column": caption_col})
    if rows == 0:
        raise InputFileError(path, f"no rows: shard {shard} has no URLs to download")
    n = int(samples_per_shard) if samples_per_shard else rows
    if n < rows:
        raise UnlearnflowError(
            f"{path}: {rows} rows but samples_per_shard is {n}; keys would run into the next shard"
        )
    extra = [c for c in additional_columns if c in names and c not in (url_col, caption_col)]

    tar_out.parent.mkdir(parents=True, exist_ok=True)
    # a hard-killed download leaves its work folder: Snakemake runs one job
    # per output at a time, so any folder of this output's is stale
    prefix = f".{tar_out.name}.img2dataset."
    for stale in tar_out.parent.glob(prefix + "*"):
        if stale.is_dir():
            log.warning("removing %s, left by a download that was killed", stale)
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=tar_out.parent))
    out_dir = tmp / "out"
    try:
        with _img2dataset_env():
            import img2dataset

            img2dataset.download(
                url_list=str(path),
                input_format="parquet",
                url_col=url_col,
                caption_col=caption_col,
                output_format="webdataset",
                output_folder=str(out_dir),
                image_size=int(image_size),
                processes_count=int(processes),
                thread_count=int(threads),
                save_additional_columns=extra or None,
                enable_wandb=False,
                # one output shard holding every row, so indices are row numbers
                number_sample_per_shard=rows,
                timeout=timeout,
                retries=int(retries),
                resize_mode=resize_mode,
                encode_quality=int(encode_quality),
                distributor="multiprocessing",
            )
        src_stats, src_tar = out_dir / "00000_stats.json", out_dir / "00000.tar"
        if not src_stats.exists() or not src_tar.exists():
            raise UnlearnflowError(
                f"img2dataset wrote no {src_stats.name} / {src_tar.name} for shard {shard} "
                f"from {path}; the shard failed inside img2dataset (see its log above)"
            )
        stats = json.loads(src_stats.read_text())
        if int(stats.get("successes", 0)) == 0:
            raise UnlearnflowError(
                f"shard {shard}: none of the {stats.get('count', rows)} images of {path} could be "
                f"fetched ({stats.get('failed_to_download', 0)} failed to download, "
                f"{stats.get('failed_to_resize', 0)} failed to resize); most common reasons: "
                f"{_failure_summary(stats.get('status_dict') or {})}"
            )
        written = _rekey_tar(src_tar, tar_out, shard, n)
        if written != stats["successes"]:
            _remove(tar_out)
            raise UnlearnflowError(
                f"shard {shard}: img2dataset reports {stats['successes']} successes "
                f"but its tar holds {written} samples"
            )
        stats = {**stats, "shard": shard}
        write_json(stats_out, stats)
        return stats
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = [
    "download_file",
    "check_parquet",
    "shard_metadata",
    "fetch_images",
]
