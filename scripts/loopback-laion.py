#!/usr/bin/env python
"""Serve a pretend LAION part on 127.0.0.1, for trying the real-data path
offline (README "Your own data").

It draws ROWS image-caption pairs from the embedded synthetic benchmark
(config.yaml's concepts, so the default eval sets match), saves the images
as files, writes a LAION-400M-schema parquet whose URLs point at them, and
serves both over HTTP until interrupted. Like a real part it has dead
links (every 97th URL is a 404) and an HTML page where an image should be.

    .venv/bin/python scripts/loopback-laion.py --rows 4000 --port 8765
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from unlearnflow.data.synthetic import SyntheticSpec, encode_jpeg, iter_shard  # noqa: E402


def synthetic_params(seed: int, rows: int) -> dict:
    """config.yaml's data.synthetic, with the schema's defaults for what it leaves out."""
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    props = schema["properties"]["data"]["properties"]["synthetic"]["properties"]
    params = {k: v["default"] for k, v in props.items() if "default" in v}
    params.update(yaml.safe_load((REPO / "config.yaml").read_text())["data"]["synthetic"])
    params.update(seed=seed, samples_per_shard=rows, failure_rate=0.0)
    return params


def make_part(root: Path, rows: int, seed: int, base_url: str) -> Path:
    spec = SyntheticSpec.from_params(synthetic_params(seed, rows))
    (root / "img").mkdir(parents=True, exist_ok=True)
    records = []
    # rows of a shard no default run draws, with the default's identity looks
    # (seeds.data), so the default eval sets score this part's people
    for i, image, caption, _, _ in iter_shard(spec, "00050"):
        name = f"img/{i}.jpg"
        if i % 97 == 13:
            name = f"img/gone-{i}.jpg"  # a dead link: never written
        elif i == 7:
            (root / name).write_bytes(b"<!doctype html><html><body>moved</body></html>")
        else:
            (root / name).write_bytes(encode_jpeg(image, 95))
        records.append(
            {
                "SAMPLE_ID": i,
                "URL": f"{base_url}/{name}",
                "TEXT": caption,
                "HEIGHT": image.shape[0],
                "WIDTH": image.shape[1],
                "LICENSE": "?",
                "NSFW": "UNLIKELY",
                "similarity": 0.3,
            }
        )
    part = root / "part-00000.parquet"
    pd.DataFrame.from_records(records).to_parquet(part, index=False)
    return part


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--seed", type=int, default=0, help="the config's seeds.data (identity looks)")
    ap.add_argument("--root", default="results-loopback/part", help="where the part's files go")
    args = ap.parse_args()
    root = Path(args.root).resolve()
    base = f"http://127.0.0.1:{args.port}"
    part = make_part(root, args.rows, args.seed, base)
    sha = hashlib.sha256(part.read_bytes()).hexdigest()
    print(f"metadata_url: {base}/{part.name}\nmetadata_sha256: {sha}\nrows: {args.rows}", flush=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    with http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler) as httpd:
        httpd.serve_forever()


if __name__ == "__main__":
    main()
