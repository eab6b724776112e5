"""The real LAION path, offline: a loopback HTTP server stands in for the web.

The server (127.0.0.1, a free port, a background thread) serves bytes the
tests make, answers Range requests with 206 / 416, and injects faults on
request: the first K requests of a path answer 503, a response can send only
part of its body and close the connection, a path can ignore Range and
answer 200, and unknown paths are 404. It records every request it sees.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from unlearnflow.data import laion
from unlearnflow.data.shards import iter_samples
from unlearnflow.data.synthetic import LAION_COLUMNS, sample_key
from unlearnflow.io import InputFileError, UnlearnflowError
from unlearnflow.stages import data as stages


# ------------------------------------------------------------ the server
class _State:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.fail_first: dict[str, int] = {}  # path -> 503s still to give
        self.cut_at: dict[str, list[int]] = {}  # path -> body bytes to send before closing, per request
        self.ignore_range: set[str] = set()
        self.stall_first: dict[str, float] = {}  # path -> seconds the first request waits before answering
        self.seen: list[tuple[str, str | None]] = []  # (path, Range header)
        self.lock = threading.Lock()

    def requests_for(self, path: str) -> list[str | None]:
        with self.lock:
            return [rng for p, rng in self.seen if p == path]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: a cut body ends at EOF

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        st: _State = self.server.state
        path = self.path.split("?")[0]
        rng = self.headers.get("Range")
        with st.lock:
            st.seen.append((path, rng))
            if st.fail_first.get(path, 0) > 0:
                st.fail_first[path] -= 1
                fail = True
            else:
                fail = False
            cut = st.cut_at[path].pop(0) if st.cut_at.get(path) else None
            stall = st.stall_first.pop(path, 0)
        time.sleep(stall)
        if fail:
            self.send_error(503, "Service Unavailable (injected)")
            return
        data = st.files.get(path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        if rng and path not in st.ignore_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        # a cut response announces the full length, sends part, and hangs up
        self.wfile.write(body if cut is None else body[:cut])
        self.wfile.flush()


@pytest.fixture
def server(monkeypatch):
    # never route loopback requests through a proxy (also for img2dataset's workers)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = _State()
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _payload(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).bytes(n)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


# -------------------------------------------------------- download_file
def test_download_completes_and_matches_sha256(server, tmp_path):
    data = _payload(300_000)
    server.state.files["/meta.parquet"] = data
    dest = tmp_path / "sub" / "meta.parquet"
    info = laion.download_file(
        f"{server.base}/meta.parquet", dest, sha256=_sha(data), progress=False, chunk_size=4096
    )
    assert dest.read_bytes() == data
    assert not _part(dest).exists()
    assert info["sha256"] == _sha(data) and info["bytes"] == len(data)
    assert info["attempts"] == 1 and info["resumed_from"] == 0
    assert server.state.requests_for("/meta.parquet") == [None]  # no Range on a fresh start


def test_wrong_sha256_raises_and_leaves_nothing(server, tmp_path):
    data = _payload(50_000)
    server.state.files["/f.bin"] = data
    dest = tmp_path / "f.bin"
    wrong = "0" * 64
    with pytest.raises(UnlearnflowError) as exc:
        laion.download_file(f"{server.base}/f.bin", dest, sha256=wrong, progress=False)
    msg = str(exc.value)
    assert str(dest) in msg and f"{server.base}/f.bin" in msg
    assert wrong in msg and _sha(data) in msg
    assert not dest.exists() and not _part(dest).exists()
    assert len(server.state.requests_for("/f.bin")) == 1  # a mismatch is no transient error: one download


def test_wrong_size_raises_and_leaves_nothing(server, tmp_path):
    data = _payload(20_000)
    server.state.files["/f.bin"] = data
    dest = tmp_path / "f.bin"
    with pytest.raises(UnlearnflowError, match="expected 19999 bytes"):
        laion.download_file(f"{server.base}/f.bin", dest, size=19_999, progress=False)
    assert not dest.exists() and not _part(dest).exists()


def test_transient_503_is_retried(server, tmp_path):
    data = _payload(10_000)
    server.state.files["/f.bin"] = data
    server.state.fail_first["/f.bin"] = 2
    dest = tmp_path / "f.bin"
    info = laion.download_file(f"{server.base}/f.bin", dest, backoff=0.01, progress=False, sha256=_sha(data))
    assert len(server.state.requests_for("/f.bin")) == 3
    assert info["attempts"] == 3
    assert dest.read_bytes() == data


def test_read_timeout_is_retried(server, tmp_path):
    data = _payload(10_000)
    server.state.files["/slow.bin"] = data
    server.state.stall_first["/slow.bin"] = 1.0  # longer than the client's timeout
    dest = tmp_path / "slow.bin"
    info = laion.download_file(
        f"{server.base}/slow.bin", dest, timeout=0.3, backoff=0.01, progress=False, sha256=_sha(data)
    )
    assert info["attempts"] == 2 and len(server.state.requests_for("/slow.bin")) == 2
    assert dest.read_bytes() == data


def test_503_beyond_retries_gives_up(server, tmp_path):
    server.state.files["/f.bin"] = b"x" * 100
    server.state.fail_first["/f.bin"] = 10
    dest = tmp_path / "f.bin"
    with pytest.raises(UnlearnflowError, match=r"after 3 attempts.*HTTP 503"):
        laion.download_file(f"{server.base}/f.bin", dest, retries=2, backoff=0.01, progress=False)
    assert len(server.state.requests_for("/f.bin")) == 3
    assert not dest.exists()


def test_404_fails_fast_naming_the_url(server, tmp_path):
    dest = tmp_path / "f.bin"
    url = f"{server.base}/nope.parquet"
    t0 = time.time()
    with pytest.raises(UnlearnflowError) as exc:
        # a retry would sleep 30 s: failing fast means no retry at all
        laion.download_file(url, dest, retries=5, backoff=30, progress=False)
    assert time.time() - t0 < 5
    assert url in str(exc.value) and "404" in str(exc.value)
    assert len(server.state.requests_for("/nope.parquet")) == 1
    assert not dest.exists() and not _part(dest).exists()


def test_body_cut_mid_stream_is_resumed_with_range(server, tmp_path):
    data = _payload(200_000, seed=1)
    server.state.files["/big.bin"] = data
    # first response: 80,000 of 200,000 bytes, then the connection closes
    server.state.cut_at["/big.bin"] = [80_000]
    dest = tmp_path / "big.bin"
    info = laion.download_file(
        f"{server.base}/big.bin", dest, sha256=_sha(data), backoff=0.01, chunk_size=1000, progress=False
    )
    seen = server.state.requests_for("/big.bin")
    assert len(seen) == 2 and seen[0] is None
    # the second request asks for exactly what the first did not deliver
    assert seen[1] == f"bytes={info['resumed_from']}-"
    assert info["resumed_from"] == 80_000
    assert dest.read_bytes() == data
    assert not _part(dest).exists()


def test_part_from_a_killed_run_is_resumed(server, tmp_path):
    data = _payload(150_000, seed=2)
    server.state.files["/big.bin"] = data
    dest = tmp_path / "big.bin"
    _part(dest).write_bytes(data[:123_457])  # what a killed earlier run left
    info = laion.download_file(f"{server.base}/big.bin", dest, sha256=_sha(data), progress=False)
    assert server.state.requests_for("/big.bin") == ["bytes=123457-"]
    assert info["resumed_from"] == 123_457 and info["attempts"] == 1
    assert dest.read_bytes() == data


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    data = _payload(30_000, seed=3)
    server.state.files["/f.bin"] = data
    server.state.ignore_range.add("/f.bin")
    dest = tmp_path / "f.bin"
    _part(dest).write_bytes(b"stale bytes that must not be kept")
    info = laion.download_file(f"{server.base}/f.bin", dest, sha256=_sha(data), progress=False)
    assert server.state.requests_for("/f.bin") == ["bytes=33-"]  # asked, got 200
    assert info["resumed_from"] == 0
    assert dest.read_bytes() == data


def test_complete_part_is_accepted_on_416(server, tmp_path):
    data = _payload(5_000, seed=4)
    server.state.files["/f.bin"] = data
    dest = tmp_path / "f.bin"
    _part(dest).write_bytes(data)  # killed between the last byte and the rename
    info = laion.download_file(f"{server.base}/f.bin", dest, sha256=_sha(data), progress=False)
    assert server.state.requests_for("/f.bin") == ["bytes=5000-"]
    assert info["bytes"] == 5_000 and dest.read_bytes() == data


# ------------------------------------------------------ metadata parquet
def _laion_frame(n: int, base_url: str = "http://example.invalid", start: int = 0) -> pd.DataFrame:
    idx = np.arange(start, start + n)
    return pd.DataFrame(
        {
            "SAMPLE_ID": idx.astype("int64"),
            "URL": [f"{base_url}/img/{i}.png" for i in idx],
            "TEXT": [f"caption number {i}" for i in idx],
            "HEIGHT": np.full(n, 40, dtype="int64"),
            "WIDTH": np.full(n, 48, dtype="int64"),
            "LICENSE": ["?" if i % 2 else "cc-by" for i in idx],
            "NSFW": ["UNLIKELY" if i % 3 else "UNSURE" for i in idx],
            "similarity": np.round(0.28 + 0.001 * (idx % 100), 6),
        },
        columns=LAION_COLUMNS,
    )


def test_metadata_stage_downloads_and_checks_parquet(server, tmp_path):
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(_laion_frame(30), preserve_index=False), buf)
    data = buf.getvalue()
    server.state.files["/part-00000.parquet"] = data
    server.state.files["/error.html"] = b"<html>rate limited</html>"
    out = tmp_path / "laion" / "meta.parquet"
    params = {"url": f"{server.base}/part-00000.parquet", "sha256": _sha(data), "size": len(data),
              "retries": 2, "backoff": 0.01, "timeout": 10}
    stages.laion_metadata({}, {"parquet": str(out)}, params)
    assert pq.read_table(out).num_rows == 30

    bad = tmp_path / "laion" / "bad.parquet"
    params = {"url": f"{server.base}/error.html", "sha256": None, "size": None,
              "retries": 0, "backoff": 0.01, "timeout": 10}
    with pytest.raises(InputFileError, match="not a readable parquet"):
        stages.laion_metadata({}, {"parquet": str(bad)}, params)
    assert not bad.exists() and not _part(bad).exists()


@pytest.fixture
def metadata(tmp_path) -> Path:
    path = tmp_path / "meta.parquet"
    # small row groups, so a shard spans several and most are skipped
    pq.write_table(pa.Table.from_pandas(_laion_frame(25), preserve_index=False), path, row_group_size=4)
    return path


@pytest.mark.parametrize("shard,expected", [("00000", range(0, 10)), ("00001", range(10, 20)), ("00002", range(20, 25))])
def test_shard_metadata_slices_rows(metadata, tmp_path, shard, expected):
    out = tmp_path / f"{shard}.parquet"
    n = laion.shard_metadata(metadata, shard, 10, out)
    df = pd.read_parquet(out)
    assert n == len(expected) == len(df)
    assert list(df.columns) == LAION_COLUMNS
    assert df["SAMPLE_ID"].tolist() == list(expected)
    pd.testing.assert_frame_equal(df, _laion_frame(25).iloc[list(expected)].reset_index(drop=True))


def test_laion_shard_metadata_stage(metadata, tmp_path):
    out = tmp_path / "s.parquet"
    stages.laion_shard_metadata(
        {"metadata": str(metadata)}, {"parquet": str(out)},
        {"shard": "00001", "samples_per_shard": 12, "url_col": "URL", "caption_col": "TEXT"},
    )
    assert pd.read_parquet(out)["SAMPLE_ID"].tolist() == list(range(12, 24))


def test_shard_beyond_end_says_how_many_rows(metadata, tmp_path):
    out = tmp_path / "s.parquet"
    with pytest.raises(UnlearnflowError, match=r"only 25 rows") as exc:
        laion.shard_metadata(metadata, "00003", 10, out)
    assert str(metadata) in str(exc.value)
    assert not out.exists()


def test_shard_metadata_missing_columns_lists_columns(tmp_path):
    path = tmp_path / "nocap.parquet"
    pq.write_table(pa.Table.from_pandas(_laion_frame(5).drop(columns=["TEXT"]), preserve_index=False), path)
    with pytest.raises(InputFileError) as exc:
        laion.shard_metadata(path, "00000", 10, tmp_path / "s.parquet")
    msg = str(exc.value)
    assert str(path) in msg and "'TEXT'" in msg and "SAMPLE_ID" in msg and "similarity" in msg
    with pytest.raises(InputFileError, match="'url'"):
        laion.shard_metadata(path, "00000", 10, tmp_path / "s.parquet", url_col="url", caption_col="URL")


def test_shard_metadata_corrupt_or_missing_file(tmp_path):
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(_payload(4096))
    with pytest.raises(InputFileError) as exc:
        laion.shard_metadata(garbage, "00000", 10, tmp_path / "s.parquet")
    assert str(garbage) in str(exc.value)
    with pytest.raises(InputFileError, match="file not found"):
        laion.shard_metadata(tmp_path / "absent.parquet", "00000", 10, tmp_path / "s.parquet")
    assert not (tmp_path / "s.parquet").exists()


# ---------------------------------------------------- img2dataset, end to end
def _image_bytes(i: int) -> tuple[str, bytes]:
    rng = np.random.default_rng(i)
    w, h = 24 + 4 * i, 40 - i  # various sizes and aspect ratios
    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    if i % 2:
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        return "jpg", buf.getvalue()
    Image.fromarray(arr).save(buf, format="PNG")
    return "png", buf.getvalue()


MISSING = 5  # the row whose URL is a 404


def _image_parquet(server, tmp_path, n=12, all_missing=False) -> tuple[Path, pd.DataFrame]:
    df = _laion_frame(n, base_url=server.base, start=30_000)
    urls = []
    for i in range(n):
        ext, data = _image_bytes(i)
        path = f"/img/{i}.{ext}"
        if i != MISSING and not all_missing:
            server.state.files[path] = data
        urls.append(server.base + path)
    df["URL"] = urls
    path = tmp_path / "shard.parquet"
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path)
    return path, df


def test_fetch_images_end_to_end(server, tmp_path):
    import webdataset as wds

    parquet, df = _image_parquet(server, tmp_path)
    sigint = signal.getsignal(signal.SIGINT)
    tar, stats_path = tmp_path / "out" / "00003.tar", tmp_path / "out" / "00003_stats.json"
    # the work folder of a download that was hard-killed, and another shard's
    stale = tmp_path / "out" / ".00003.tar.img2dataset.x1y2"
    (stale / "out").mkdir(parents=True)
    (stale / "out" / "00000.tar").write_bytes(b"half")
    other = tmp_path / "out" / ".00004.tar.img2dataset.zz"
    other.mkdir()
    stats = laion.fetch_images(
        parquet, "00003", tar, stats_path, image_size=32, processes=1, threads=4, timeout=5,
        samples_per_shard=10_000,
    )
    # img2dataset installs a SIGINT handler that exits 0; ours is back
    assert signal.getsignal(signal.SIGINT) is sigint
    # img2dataset's own stats, plus the shard
    on_disk = json.loads(stats_path.read_text())
    assert on_disk == json.loads(json.dumps(stats))
    assert on_disk["shard"] == "00003"
    assert on_disk["count"] == 12 and on_disk["successes"] == 11
    assert on_disk["failed_to_download"] == 1 and on_disk["failed_to_resize"] == 0
    assert on_disk["status_dict"]["success"] == 11
    assert any("404" in reason for reason in on_disk["status_dict"])

    # keys: shard 00003, then the row index (4 digits for 10,000 per shard), in order
    samples = list(iter_samples(tar))
    expected_rows = [i for i in range(12) if i != MISSING]
    assert [s.key for s in samples] == [sample_key("00003", i, 10_000) for i in expected_rows]
    assert samples[0].key == "000030000" and samples[-1].key == "000030011"
    for s, i in zip(samples, expected_rows):
        row = df.iloc[i]
        assert set(s.files) == {"jpg", "txt", "json"}
        assert s.caption == row["TEXT"]
        meta = s.meta
        assert meta["key"] == s.key
        assert meta["url"] == row["URL"] and meta["caption"] == row["TEXT"]
        assert meta["NSFW"] == row["NSFW"] and meta["LICENSE"] == row["LICENSE"]
        assert meta["similarity"] == pytest.approx(row["similarity"])
        assert meta["status"] == "success"
        assert s.image().size == (32, 32)

    # webdataset itself reads it
    got = [(x["__key__"], x["txt"].decode()) for x in wds.WebDataset(str(tar), shardshuffle=False)]
    assert got == [(s.key, s.caption) for s in samples]
    # img2dataset's scratch folder is gone, the stale one too; another output's is kept
    assert sorted(p.name for p in tar.parent.iterdir()) == [".00004.tar.img2dataset.zz", "00003.tar", "00003_stats.json"]


def test_images_stage_all_urls_failing_is_an_error(server, tmp_path):
    parquet, _ = _image_parquet(server, tmp_path, n=3, all_missing=True)
    out_dir = tmp_path / "out"
    out = {"tar": str(out_dir / "00007.tar"), "stats": str(out_dir / "00007_stats.json")}
    params = {"shard": "00007", "image_size": 32, "url_col": "URL", "caption_col": "TEXT",
              "additional_columns": ["NSFW", "similarity", "LICENSE"], "processes": 1, "threads": 2,
              "timeout": 5, "retries": 0, "resize_mode": "border", "encode_quality": 95,
              "samples_per_shard": 10_000}
    with pytest.raises(UnlearnflowError) as exc:
        stages.laion_images({"parquet": str(parquet)}, out, params)
    msg = str(exc.value)
    assert "shard 00007" in msg and "3 images" in msg and "404" in msg
    assert not os.path.exists(out["tar"]) and not os.path.exists(out["stats"])
    assert list(out_dir.iterdir()) == []  # no scratch left either


UNGUARDED_SCRIPT = """
import sys
from unlearnflow.stages import data as stages
# no `if __name__ == "__main__"` guard, like the script Snakemake runs
stages.laion_images({"parquet": sys.argv[1]}, {"tar": sys.argv[2], "stats": sys.argv[3]},
                   {"shard": "00001", "image_size": 32, "threads": 2, "samples_per_shard": 10000})
print("STAGE DONE")
"""


def test_images_stage_from_an_unguarded_script(server, tmp_path):
    # img2dataset spawns its workers, and spawn re-runs a main script in each;
    # fetch_images must keep a guard-less script from running the stage again
    # in every worker (which hangs the pool).
    parquet, _ = _image_parquet(server, tmp_path, n=3)
    script = tmp_path / "stage_script.py"
    script.write_text(UNGUARDED_SCRIPT)
    tar, stats = tmp_path / "00001.tar", tmp_path / "00001_stats.json"
    src = Path(laion.__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    # own session, so a hang is ended with all the workers it spawned
    proc = subprocess.Popen(
        [sys.executable, str(script), str(parquet), str(tar), str(stats)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the stage hung when run from a script without a __main__ guard")
    assert proc.returncode == 0, err[-3000:]
    assert out.count("STAGE DONE") == 1
    assert [s.key for s in iter_samples(tar)] == ["000010000", "000010001", "000010002"]
    assert json.loads(stats.read_text())["successes"] == 3


def _laion_cfg(server, targets, retain_size=3, data=None, **laion):
    """A CLIP-only config on the loopback part /meta.parquet: shards 00000
    (training) and 00001 (held out) of 12 rows; ``data`` and ``laion``
    override the data and data.laion keys."""
    from conftest import small_config

    cfg = small_config(targets=targets)
    cfg["branches"] = ["clip"]
    cfg["data"].update(
        source="laion", shards=["00000"], heldout_shards=["00001"],
        laion={"metadata_url": server.base + "/meta.parquet", "samples_per_shard": 12, "image_size": 32,
               "processes": 1, "threads": 4, **laion},
    )  # fmt: skip
    cfg["data"].update(data or {})
    cfg["selection"]["retain_size"] = retain_size
    return cfg


def test_laion_branch_of_the_dag_end_to_end(server, tmp_path):
    """data.source: laion through Snakemake: metadata over HTTP, two shards
    sliced from it, images via img2dataset, then the forget/retain/heldout sets."""
    import json

    from conftest import Workflow

    n = 24
    df = _laion_frame(n, base_url=server.base)
    urls, texts = [], []
    for i in range(n):
        ext, data = _image_bytes(i)  # distinct pictures: a copy in the held-out shard is no non-member
        path = f"/laion/{i}.{ext}"
        server.state.files[path] = data
        urls.append(server.base + path)
        texts.append(f"Mira Castell at event {i}" if i % 3 == 0 else f"a photo of thing {i}")
    df["URL"], df["TEXT"] = urls, texts
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf, row_group_size=5)
    server.state.files["/meta.parquet"] = buf.getvalue()
    server.state.fail_first["/meta.parquet"] = 1  # one transient failure, retried

    mira = [{"id": "mira_castell", "name": "Mira Castell", "kind": "identity"}]
    cfg = _laion_cfg(server, mira, retain_size=5, metadata_sha256=_sha(buf.getvalue()))
    wf = Workflow(tmp_path / "wd")
    wf.workdir.mkdir()
    wf.run("results/data/mira_castell/summary.json", cfg=cfg)
    res = wf.workdir / "results/data"
    forget = list(iter_samples(res / "mira_castell/forget.tar"))
    heldout = list(iter_samples(res / "mira_castell/heldout.tar"))
    # 12 rows a shard: img2dataset's keys are the shard id then 2 index digits
    assert [s.key for s in forget] == [f"00000{i:02d}" for i in (0, 3, 6, 9)]
    assert all(s.caption.startswith("Mira Castell") for s in forget + heldout)
    assert [s.key for s in heldout] == [f"00001{i:02d}" for i in (0, 3, 6, 9)]
    summary = json.loads((res / "mira_castell/summary.json").read_text())
    assert summary["forget"] == 4 and summary["retain"] == 5
    stats = json.loads((res / "laion/00001_stats.json").read_text())
    assert stats["successes"] == 12 and stats["shard"] == "00001"
    assert server.state.requests_for("/meta.parquet").count(None) >= 2  # 503, then the file


def test_one_messy_part_end_to_end_without_a_held_out_shard(server, tmp_path):
    """One LAION part as a user meets it, one shard, no held-out shard: dead
    links, a 5xx, a time-out, an HTML page, a corrupt JPEG, RGBA and grey
    PNGs, null and unicode and very long captions, the target's URL listed
    twice (once with a null caption), near misses of the name. The sets are
    right: forget is every caption naming the target on word boundaries,
    retain holds none of its pictures, held-out is a hashed share of rows."""
    import hashlib
    import json

    from conftest import Workflow
    from unlearnflow.data.heldout import is_heldout

    def png(i, mode="RGB"):
        rng = np.random.default_rng(100 + i)
        shape = (30, 30) if mode == "L" else (30, 30, len(mode))
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(buf, format="PNG")
        return buf.getvalue()

    rows = []  # (path or None, bytes or None, caption)

    def add(caption, data=None, path=None):
        path = path or f"/p/{len(rows)}.png"
        if data is not None:
            server.state.files[path] = data
        rows.append((path, caption))

    for i in range(24):  # the target, in forms the matcher must find
        add(["Mira Castell at event", "mira castell", "#Mira_Castell_2024", "Interview: MIRA CASTELL!"][i % 4] + f" {i}", png(i))
    add("Mira Castell, the same picture twice", png(500), path="/dup.png")
    add(None, path="/dup.png")  # the same URL again, no caption
    add("a portrait", path="/dup.png")  # and once more, under a caption naming nothing
    for i, near in enumerate(["Mira Castellano sings", "MiraCastell", "castell walls at dusk", "Mira Castells"]):
        add(near, png(200 + i))
    add("dead link", path="/gone.png")  # 404
    add("server error", png(300), path="/err.png")
    server.state.fail_first["/err.png"] = 100  # 503 on every try
    add("slow server", png(301), path="/slow.png")
    server.state.stall_first["/slow.png"] = 3.0  # beyond the 1 s time-out
    add("an HTML page", b"<!doctype html><html><body>Mira Castell</body></html>")
    add("a corrupt jpeg of Mira Castell", _image_bytes(1)[1][:200])
    add("rgba picture", png(400, "RGBA"))
    add("grey picture", png(401, "L"))
    add("ünïcödé café ☕ 東京", png(402))
    add("long " * 600, png(403))
    add("", png(404))  # an empty caption
    for i in range(40):
        add(f"a photo of thing {i}", png(600 + i))
    n = len(rows)
    df = _laion_frame(n, base_url=server.base)
    df["URL"] = [server.base + p for p, _ in rows]
    df["TEXT"] = pd.array([c for _, c in rows], dtype=object)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf, row_group_size=16)
    server.state.files["/meta.parquet"] = buf.getvalue()

    mira = [{"id": "mira_castell", "name": "Mira Castell", "kind": "identity"}]
    cfg = _laion_cfg(
        server, mira, retain_size=30, data={"heldout_shards": [], "heldout_fraction": 0.25},
        samples_per_shard=n, timeout=1, retries=0,
    )  # fmt: skip
    wf = Workflow(tmp_path / "wd")
    wf.workdir.mkdir()
    wf.run("results/data/mira_castell/summary.json", cfg=cfg)
    res = wf.workdir / "results/data"
    part = {s.key: s for s in iter_samples(res / "laion/00000.tar")}
    sets = {k: list(iter_samples(res / f"mira_castell/{k}.tar")) for k in ("forget", "retain", "heldout")}
    summary = json.loads((res / "mira_castell/summary.json").read_text())
    stats = json.loads((res / "laion/00000_stats.json").read_text())

    # img2dataset kept what it could decode; the failures are counted by kind
    assert 24 + 3 + 4 + 4 + 40 <= len(part) < n and stats["successes"] == len(part)
    assert len([r for r in (stats.get("status_dict") or {}) if r != "success"]) >= 2, stats

    def names_target(caption):
        return bool(re.search(r"(?<![^\W_])mira[\s_]+castell(?![^\W_])", caption, re.I))

    def digest(s):
        return hashlib.sha256(s.image_bytes).hexdigest()

    held = {k for k in part if is_heldout(k, 0.25, 0)}
    target_keys = {k for k, s in part.items() if names_target(s.caption)}
    assert {s.key for s in sets["forget"]} == target_keys - held
    assert {s.key for s in sets["heldout"]} == target_keys & held and sets["heldout"]
    assert not any(s.caption.startswith(("Mira Castellano", "MiraCastell", "Mira Castells")) for s in sets["forget"])
    # no picture of the forget set in retain (the null-caption copy of /dup.png)
    assert not {digest(s) for s in sets["retain"]} & {digest(s) for s in sets["forget"]}
    assert all(s.caption.strip() for s in sets["retain"]) and not {s.key for s in sets["retain"]} & held
    assert len(sets["retain"]) == 30 and summary["heldout_source"]["fraction"] == 0.25
    assert summary["dropped"]["retain_empty_caption"] >= 2  # "" and the null caption


def _simple_part(server, n=24):
    df = _laion_frame(n, base_url=server.base)
    urls, texts = [], []
    for i in range(n):
        ext, data = _image_bytes(i)  # distinct pictures: a copy in the held-out shard is no non-member
        server.state.files[f"/s/{i}.{ext}"] = data
        urls.append(f"{server.base}/s/{i}.{ext}")
        texts.append(f"Mira Castell at event {i}" if i % 3 == 0 else f"Bram Okafor, photo {i}")
    df["URL"], df["TEXT"] = urls, texts
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf)
    server.state.files["/meta.parquet"] = buf.getvalue()
    return buf.getvalue()




def test_a_target_no_caption_names_fails_before_any_image_download(server, tmp_path):
    from conftest import Workflow

    _simple_part(server)
    wf = Workflow(tmp_path / "wd")
    wf.workdir.mkdir()
    nobody = [{"id": "nobody", "name": "Zed Nobody", "kind": "identity"}]
    code, out = wf.run("results/data/nobody/summary.json", cfg=_laion_cfg(server, nobody), check=False)
    assert code != 0 and "target 'nobody': none of the 12 captions" in out and "before downloading any image" in out
    assert not [p for p, _ in server.state.seen if p.startswith("/s/")]  # not one image request
    assert (wf.workdir / "results/data/laion/00000.parquet").exists()  # the metadata is kept

    # a good target: the download runs; adding a second one downloads nothing again
    mira = [{"id": "mira_castell", "name": "Mira Castell", "kind": "identity"}]
    wf.run("results/data/mira_castell/summary.json", cfg=_laion_cfg(server, mira))
    assert len([p for p, _ in server.state.seen if p.startswith("/s/")]) == 24
    bram = {"id": "bram", "name": "Bram Okafor", "kind": "identity"}
    _, out = wf.run("results/data/bram/summary.json", cfg=_laion_cfg(server, mira + [bram]))
    assert "rule laion_images" not in out and "rule select_sets" in out
    assert len([p for p, _ in server.state.seen if p.startswith("/s/")]) == 24
    assert json.loads((wf.workdir / "results/data/bram/summary.json").read_text())["forget"] == 8


def test_a_dead_metadata_url_is_requested_once(server, tmp_path):
    """A 404 is no transient error: neither the download nor the job retries."""
    from conftest import Workflow

    wf = Workflow(tmp_path / "wd")
    wf.workdir.mkdir()
    mira = [{"id": "mira_castell", "name": "Mira Castell", "kind": "identity"}]
    code, out = wf.run("results/data/mira_castell/summary.json", cfg=_laion_cfg(server, mira), check=False)
    assert code != 0 and "404" in out
    assert len(server.state.requests_for("/meta.parquet")) == 1


def test_the_loopback_part_of_the_readme_walkthrough(tmp_path):
    """scripts/loopback-laion.py makes a LAION-schema part whose URLs point
    at its files, with dead links and an HTML page among them."""
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("loopback", REPO / "scripts/loopback-laion.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    part = mod.make_part(tmp_path, 120, 0, "http://127.0.0.1:1")
    df = pd.read_parquet(part)
    assert list(df.columns) == LAION_COLUMNS and len(df) == 120
    files = [tmp_path / u.removeprefix("http://127.0.0.1:1/") for u in df["URL"]]
    missing = [f for f in files if not f.exists()]
    assert len(missing) == 2 and all("gone" in f.name for f in missing)  # rows 13 and 110
    assert (tmp_path / "img/7.jpg").read_bytes().startswith(b"<!doctype html>")
    assert df["TEXT"].str.contains("Mira Castell", case=False).any()
