"""Atomic writes and strict readers: bad files are errors that name the file."""

import os
import signal
import subprocess
import sys
import tarfile
import textwrap

import pandas as pd
import pytest

from unlearnflow.data.shards import Sample, ShardWriter, iter_samples, write_shard
from unlearnflow.io import InputFileError, atomic_path, read_json, read_parquet, write_json


def _tar(path, n=5):
    write_shard(path, (Sample(f"{i:05d}", {"jpg": b"x" * (700 + i), "txt": f"c{i}", "json": "{}"}) for i in range(n)))
    return path


def test_roundtrip_and_determinism(tmp_path):
    a, b = _tar(tmp_path / "a.tar"), _tar(tmp_path / "b.tar")
    assert a.read_bytes() == b.read_bytes()
    samples = list(iter_samples(a))
    assert [s.key for s in samples] == [f"{i:05d}" for i in range(5)]
    assert samples[2].caption == "c2" and samples[2].files["jpg"] == b"x" * 702
    with tarfile.open(a) as tf:
        assert {m.mtime for m in tf.getmembers()} == {0}


def test_writer_rejects_duplicate_and_dotted_keys(tmp_path):
    with pytest.raises(ValueError, match="duplicate"):
        write_shard(tmp_path / "d.tar", [Sample("k", {"txt": "a"}), Sample("k", {"txt": "b"})])
    with pytest.raises(ValueError, match="dot"):
        write_shard(tmp_path / "e.tar", [Sample("a.b", {"txt": "a"})])
    assert not (tmp_path / "d.tar").exists() and not (tmp_path / "e.tar").exists()
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[: len(b) - 2048], "truncated"),  # cut at a member boundary
        (lambda b: b[:1700], "truncated"),  # cut inside a member
        (lambda b: b"\x00garbage" * 300, "tar"),
        (lambda b: b[:1536] + b"\xff" * 512 + b[2048:], "tar"),  # second header corrupt
        (lambda b: b"", "empty"),
    ],
)
def test_damaged_tars_name_the_file(tmp_path, damage, message):
    good = _tar(tmp_path / "good.tar")
    bad = tmp_path / "bad.tar"
    bad.write_bytes(damage(good.read_bytes()))
    with pytest.raises(InputFileError, match=message) as err:
        list(iter_samples(bad))
    assert str(bad) in str(err.value)


def test_missing_files_are_named(tmp_path):
    for reader in (iter_samples, read_parquet, read_json):
        with pytest.raises(InputFileError, match="not found") as err:
            r = reader(tmp_path / "nope.x")
            list(r) if reader is iter_samples else r
        assert "nope.x" in str(err.value)


def test_corrupt_parquet_and_json_are_named(tmp_path):
    p = tmp_path / "meta.parquet"
    pd.DataFrame({"URL": ["a"], "TEXT": ["b"]}).to_parquet(p)
    p.write_bytes(p.read_bytes()[:-20])
    with pytest.raises(InputFileError, match="meta.parquet"):
        read_parquet(p)
    j = tmp_path / "s.json"
    j.write_text("{not json")
    with pytest.raises(InputFileError, match="s.json"):
        read_json(j)
    pd.DataFrame({"URL": ["a"]}).to_parquet(p)
    with pytest.raises(InputFileError, match="missing columns"):
        read_parquet(p, columns=["URL", "TEXT"])


def test_atomic_path_keeps_previous_version_on_failure(tmp_path):
    dest = tmp_path / "out.json"
    write_json(dest, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_text('{"v": 2, "partial')
            raise RuntimeError("killed")
    assert read_json(dest) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    assert oct(dest.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_killed_writer_leaves_no_trusted_output(tmp_path):
    """SIGKILL in the middle of writing a tar: the destination never appears."""
    dest = tmp_path / "shard.tar"
    script = textwrap.dedent(
        f"""
        import sys, time
        from unlearnflow.data.shards import Sample, ShardWriter
        with ShardWriter({str(dest)!r}) as w:
            for i in range(10**6):
                w.write(Sample(f"{{i:07d}}", {{"txt": "x" * 1000}}))
                if i == 200:
                    print("writing", flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not dest.exists()
    # what is left is a hidden temp file that no reader is ever pointed at
    assert all(p.name.startswith(".shard.tar.") for p in tmp_path.iterdir())


def test_shardwriter_exception_removes_temp(tmp_path):
    with pytest.raises(KeyError):
        with ShardWriter(tmp_path / "x.tar") as w:
            w.write(Sample("a", {"txt": "1"}))
            raise KeyError("boom")
    assert list(tmp_path.iterdir()) == []


def test_tensor_files_and_saved_models_have_the_umasks_permissions(tmp_path):
    """safetensors writes owner-only files; outputs are ordinary files that a
    group (or a web server of the report) can read."""
    import torch

    from unlearnflow.io import make_readable, save_tensors

    dest = tmp_path / "g.safetensors"
    save_tensors(dest, {"w": torch.zeros(2)}, {"k": "v"})
    assert oct(dest.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    (tmp_path / "m").mkdir()
    f = tmp_path / "m" / "x.bin"
    f.write_bytes(b"1")
    os.chmod(f, 0o600)
    make_readable(tmp_path / "m")
    assert oct(f.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
