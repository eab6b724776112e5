"""The synthetic LAION-like benchmark: formats, determinism, captions, eval sets."""

import io
import json
import re

import numpy as np
import pandas as pd
import pytest
import webdataset as wds
from PIL import Image

from conftest import IDENTITIES, OBJECTS, STYLES, small_synthetic
from unlearnflow.data import render
from unlearnflow.data.select import Matcher
from unlearnflow.data.shards import iter_samples
from unlearnflow.data.synthetic import (
    EVAL_SETS,
    LAION_COLUMNS,
    SyntheticSpec,
    eval_samples,
    iter_shard,
    sample_key,
    write_eval_set,
    write_shard,
)
from unlearnflow.io import UnlearnflowError


def test_parquet_has_laion_columns_and_rows(small_shards):
    df = pd.read_parquet(small_shards[0].with_suffix(".parquet"))
    assert list(df.columns) == LAION_COLUMNS
    assert len(df) == 400
    assert df["SAMPLE_ID"].is_unique
    assert df["URL"].str.startswith("https://").all()
    assert df["similarity"].between(0.28, 0.42).all()
    assert set(df["NSFW"]) == {"UNLIKELY"}
    assert str(df["HEIGHT"].dtype) == "int64"


def test_tar_is_img2dataset_webdataset(small_shards):
    tar = small_shards[1]
    df = pd.read_parquet(tar.with_suffix(".parquet"))
    stats = json.loads(tar.with_name("00001_stats.json").read_text())
    captions = dict(zip(df["URL"], df["TEXT"]))
    n = 0
    for sample in wds.WebDataset(str(tar), shardshuffle=False).decode("pil"):
        n += 1
        meta = sample["json"]
        assert sample["__key__"] == meta["key"]
        assert sample["__key__"].startswith("00001")  # shard id, then index
        assert sample["jpg"].size == (32, 32)
        assert sample["txt"] == meta["caption"] == captions[meta["url"]]
        assert meta["status"] == "success"
        assert {"NSFW", "similarity", "LICENSE", "sha256", "width", "height"} <= set(meta)
    # failed downloads are in the parquet and the stats, not in the tar
    assert n == stats["successes"] < stats["count"] == len(df)
    assert stats["failed_to_download"] == stats["count"] - stats["successes"]
    assert sum(stats["status_dict"].values()) == stats["count"]


def test_member_order_is_jpg_txt_json(small_shards):
    import tarfile

    with tarfile.open(small_shards[0]) as tf:
        names = [m.name for m in tf.getmembers()[:6]]
    exts = [n.split(".", 1)[1] for n in names]
    assert exts == ["jpg", "txt", "json", "jpg", "txt", "json"]


def test_key_scheme_matches_img2dataset():
    assert sample_key("00000", 12, 10000) == "000000012"
    assert sample_key("00003", 12, 10000) == "000030012"
    assert sample_key("00003", 7, 300) == "00003007"


def test_shard_is_deterministic_and_seeded(tmp_path):
    spec = SyntheticSpec.from_params(small_synthetic(samples_per_shard=60))
    for d in ("a", "b"):
        write_shard(spec, "00000", tmp_path / d / "s.parquet", tmp_path / d / "s.tar", tmp_path / d / "s.json")
    assert (tmp_path / "a/s.tar").read_bytes() == (tmp_path / "b/s.tar").read_bytes()
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a/s.parquet"), pd.read_parquet(tmp_path / "b/s.parquet"))
    other = SyntheticSpec.from_params(small_synthetic(samples_per_shard=60, seed=1))
    write_shard(other, "00000", tmp_path / "c/s.parquet", tmp_path / "c/s.tar", tmp_path / "c/s.json")
    assert (tmp_path / "c/s.tar").read_bytes() != (tmp_path / "a/s.tar").read_bytes()
    # a different shard of the same spec is different data
    write_shard(spec, "00001", tmp_path / "d/s.parquet", tmp_path / "d/s.tar", tmp_path / "d/s.json")
    caps_a = [s.caption for s in iter_samples(tmp_path / "a/s.tar")]
    caps_d = [s.caption for s in iter_samples(tmp_path / "d/s.tar")]
    assert caps_a != caps_d


def test_captions_are_laion_like():
    spec = SyntheticSpec.from_params(small_synthetic(samples_per_shard=1500))
    rows = [(cap, lab) for _, _, cap, lab, _ in iter_shard(spec, "00000")]
    kinds = [lab["kind"] for _, lab in rows]
    for kind in ("identity", "object", "style", "pair", "none"):
        assert kinds.count(kind) > 20, kind
    name = "Mira Castell"
    spellings = {cap for cap, lab in rows if name in lab["names"]}
    assert any("Mira Castell" in c for c in spellings)
    assert any("mira castell" in c for c in spellings)
    assert any("MIRA CASTELL" in c for c in spellings)
    assert any("Mira_Castell" in c for c in spellings)
    # the caption of every labelled sample names its concepts
    for cap, lab in rows:
        for concept in lab["names"]:
            assert Matcher(concept)(cap), (cap, concept)
    # captions that name two people exist, and "none" captions name nothing
    two = [cap for cap, lab in rows if lab["kind"] == "pair" and all(n in IDENTITIES for n in lab["names"])]
    assert len(two) > 10
    every = [Matcher(n) for n in IDENTITIES + OBJECTS + STYLES]
    for cap, lab in rows:
        if lab["kind"] == "none":
            assert not any(m(cap) for m in every), cap
    # distractor words appear
    assert any(re.search(r"Stock|Getty|HD|jpg|4k", cap) for cap, _ in rows)


def test_identity_signatures_are_distinct():
    looks = render.identity_looks(40, seed=3)
    attrs = [lk.attributes() for lk in looks]
    assert len(set(attrs)) == 40
    for i in range(len(attrs)):
        for j in range(i):
            assert sum(a != b for a, b in zip(attrs[i], attrs[j])) >= 3
    assert render.identity_looks(12, seed=3) == looks[:12]  # stable prefix


def test_identities_are_visually_separable():
    """A linear probe on colour statistics tells the identities apart, so a
    tiny CLIP has a learnable signal (and the nuisances do not hide it)."""
    from sklearn.linear_model import LogisticRegression

    spec = SyntheticSpec.from_params(small_synthetic())

    def features(samples):
        X, y = [], []
        for s in samples:
            img = np.asarray(Image.open(io.BytesIO(s.files["jpg"])), dtype=np.float32) / 255
            c = img[6:26, 8:24]  # the face region
            hist = [np.histogram(c[..., k], bins=8, range=(0, 1))[0] for k in range(3)]
            X.append(np.concatenate([np.concatenate(hist) / c[..., 0].size, c[::3, ::3].ravel()]))
            y.append(int(s.files["cls"]))
        return np.array(X), np.array(y)

    Xtr, ytr = features(eval_samples(spec, "identities", "test", 40))
    Xte, yte = features(eval_samples(spec, "identities", "val", 20))
    acc = LogisticRegression(max_iter=3000).fit(Xtr, ytr).score(Xte, yte)
    assert acc > 0.8, acc


@pytest.mark.parametrize("evalset", EVAL_SETS)
def test_eval_sets(tmp_path, evalset):
    spec = SyntheticSpec.from_params(small_synthetic())
    out = {s: tmp_path / f"{s}.tar" for s in ("val", "test")} | {"classes": tmp_path / "classes.json"}
    info = write_eval_set(spec, evalset, {"val": 2, "test": 3}, out)
    classes = json.loads(out["classes"].read_text())
    assert classes == info
    cells = {"identities": len(IDENTITIES), "objects": len(OBJECTS), "styles": len(STYLES) * len(OBJECTS)}[evalset]
    assert classes["counts"] == {"val": 2 * cells, "test": 3 * cells}
    val = list(iter_samples(out["val"]))
    test = list(iter_samples(out["test"]))
    assert len(val) == 2 * cells and len(test) == 3 * cells
    assert not {s.files["jpg"] for s in val} & {s.files["jpg"] for s in test}
    for s in val + test:
        meta = s.meta
        assert classes["classes"][meta["label_index"]] == meta["label"]
        assert int(s.files["cls"]) == meta["label_index"]
        if evalset == "styles":
            assert s.caption == f"A {meta['object']} image in {meta['label']} style."
            assert classes["objects"][meta["object_index"]] == meta["object"]
    # readable with webdataset's decoders
    first = next(iter(wds.WebDataset(str(out["test"]), shardshuffle=False).decode("pil")))
    assert first["jpg"].size == (32, 32) and isinstance(first["cls"], int)


def test_eval_sets_ignore_shard_params(tmp_path):
    """Eval images depend on the concepts, not on how shards are drawn."""
    a = SyntheticSpec.from_params(small_synthetic(samples_per_shard=10))
    b = SyntheticSpec.from_params(small_synthetic(samples_per_shard=99, failure_rate=0.3))
    sa = [s.files["jpg"] for s in eval_samples(a, "objects", "val", 2)]
    sb = [s.files["jpg"] for s in eval_samples(b, "objects", "val", 2)]
    assert sa == sb


def test_larger_images(tmp_path):
    spec = SyntheticSpec.from_params(small_synthetic(image_size=64, samples_per_shard=5))
    write_shard(spec, "00000", tmp_path / "s.parquet", tmp_path / "s.tar", tmp_path / "s.json")
    for s in iter_samples(tmp_path / "s.tar"):
        assert s.image().size == (64, 64)


@pytest.mark.parametrize(
    "over, message",
    [
        ({"image_size": 16}, "image_size"),
        ({"objects": [f"o{i}" for i in range(13)]}, "silhouettes"),
        ({"styles": [f"s{i}" for i in range(11)]}, "looks"),
        ({"objects": ["ball", "Mira Castell"]}, "used twice"),
    ],
)
def test_bad_specs_are_named(over, message):
    with pytest.raises(UnlearnflowError, match=message):
        SyntheticSpec.from_params(small_synthetic(**over))
