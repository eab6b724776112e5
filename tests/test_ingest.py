"""Ingestion of real benchmark folders into the evaluation-set format."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from unlearnflow.data import ingest as ing
from unlearnflow.data.shards import iter_samples
from unlearnflow.io import InputFileError, UnlearnflowError, read_json
from unlearnflow.stages.data import ingest_eval_set

SIZE = 32


def make_image(path: Path, color=(200, 30, 30), size=(48, 36), mode="RGB", fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", size, color)
    im.paste((color[2], color[0], color[1]), (0, 0, size[0] // 2, size[1] // 3))  # some structure
    if mode != "RGB":
        im = im.convert(mode)
    im.save(path, format=fmt)
    return path


def outputs(d: Path) -> dict:
    return {"val": d / "val.tar", "test": d / "test.tar", "classes": d / "classes.json"}


def read_set(out: dict) -> dict[str, list]:
    return {s: list(iter_samples(out[s])) for s in ("val", "test")}


def check_common(out: dict, info: dict, n_total: int) -> list:
    """Format checks shared by every layout; returns all samples."""
    assert read_json(out["classes"]) == info
    sets = read_set(out)
    assert info["counts"] == {s: len(v) for s, v in sets.items()}
    assert sum(info["counts"].values()) == n_total
    files = {s: {x.meta["file"] for x in v} for s, v in sets.items()}
    assert not files["val"] & files["test"]
    assert len(files["val"] | files["test"]) == n_total
    samples = []
    for split, ss in sets.items():
        for s in ss:
            assert set(s.files) == {"jpg", "txt", "json", "cls"}
            evalset, key_split, cell, j = s.key.split("_")
            assert "." not in s.key and key_split == split and len(cell) == 4 and len(j) == 5
            meta = s.meta
            assert meta["split"] == split and evalset == {"style": "styles", "identity": "identities",
                                                          "object": "objects"}[meta["kind"]]
            assert s.files["cls"] == str(meta["label_index"]).encode()
            assert info["classes"][meta["label_index"]] == meta["label"]
            im = Image.open(io.BytesIO(s.files["jpg"]))
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (SIZE, SIZE)
            samples.append(s)
    # every class with >= 2 images is in both splits
    for li in range(len(info["classes"])):
        n = {sp: sum(x.meta["label_index"] == li for x in ss) for sp, ss in sets.items()}
        if sum(n.values()) >= 2:
            assert n["val"] >= 1 and n["test"] >= 1, (li, n)
    return samples


def check_webdataset(path: Path, n: int) -> None:
    import webdataset as wds

    ds = wds.WebDataset(str(path), shardshuffle=False).decode("pil")
    got = list(ds)
    assert len(got) == n
    for s in got:
        assert isinstance(s["cls"], int) and s["cls"] == s["json"]["label_index"]
        assert s["jpg"].size == (SIZE, SIZE)


# ------------------------------------------------------------ UnlearnCanvas
def unlearncanvas_tree(root: Path) -> int:
    styles = {"Van_Gogh": (30, 60, 200), "Abstractionism": (220, 200, 20)}
    n = 0
    for s, color in styles.items():
        for oi, obj in enumerate(["Dogs", "Birds", "Architectures"]):
            for i, ext in enumerate([".jpg", ".JPG", ".png"]):
                make_image(root / s / obj / f"{i + 1}{ext}", color, size=(40 + oi, 30 + i),
                           fmt="PNG" if ext == ".png" else "JPEG")
                n += 1
    (root / "Van_Gogh" / "Dogs" / "notes.txt").write_text("not an image")
    return n


def test_unlearncanvas(tmp_path):
    root = tmp_path / "uc"
    n = unlearncanvas_tree(root)
    out = outputs(tmp_path / "out")
    info = ing.ingest("unlearncanvas", root, out, image_size=SIZE, seed=3)
    assert info["kind"] == "style"
    assert info["classes"] == ["Abstractionism", "Van_Gogh"]
    assert info["objects"] == ["Architectures", "Birds", "Dogs"]
    assert info["source"]["layout"] == "unlearncanvas" and info["source"]["root"] == str(root)
    samples = check_common(out, info, n)
    for s in samples:
        m = s.meta
        style, obj, _ = m["file"].split("/")
        assert (m["kind"], m["style"], m["label"], m["object"]) == ("style", style, style, obj)
        assert m["label_index"] == info["classes"].index(style)
        assert m["object_index"] == info["objects"].index(obj)
        assert s.caption == f"A {obj} image in {style.replace('_', ' ')} style."
        cell = m["label_index"] * 3 + m["object_index"]
        assert s.key.startswith(f"styles_{m['split']}_{cell:04d}_")
    check_webdataset(out["val"], info["counts"]["val"])

    # rerun: byte-identical tars
    out2 = outputs(tmp_path / "out2")
    assert ing.ingest("unlearncanvas", root, out2, image_size=SIZE, seed=3) == info
    for k in ("val", "test", "classes"):
        assert out[k].read_bytes() == out2[k].read_bytes()


def test_max_per_class_spreads_over_objects(tmp_path):
    root = tmp_path / "uc"
    unlearncanvas_tree(root)
    out = outputs(tmp_path / "out")
    info = ing.ingest("unlearncanvas", root, out, image_size=SIZE, seed=1, max_per_class=6, val_fraction=0.5)
    assert info["counts"] == {"val": 6, "test": 6}
    samples = check_common(out, info, 12)
    for style in info["classes"]:
        objs = [s.meta["object"] for s in samples if s.meta["style"] == style]
        assert sorted(objs) == sorted(info["objects"] * 2)  # 2 of each object, not the first 6 files


# --------------------------------------------------------------- identities
def test_identity_folders_top_k_and_min_images(tmp_path):
    root = tmp_path / "faces"
    counts = {"Ada_Lovelace": 4, "Bob Marley": 2, "Carl Sagan": 5, "Dee": 1}
    for k, (name, c) in enumerate(counts.items()):
        for i in range(c):
            make_image(root / name / f"img{i}.jpeg", (40 * k, 100, 150))
    out = outputs(tmp_path / "all")
    info = ing.ingest("identity_folders", root, out, image_size=SIZE, seed=0)
    assert info["kind"] == "identity" and info["classes"] == sorted(counts)
    samples = check_common(out, info, sum(counts.values()))
    for s in samples:
        assert s.meta["label"] == s.meta["file"].split("/")[0]
        assert s.caption == s.meta["label"].replace("_", " ")
        assert s.meta["kind"] == "identity"

    out = outputs(tmp_path / "top2")
    info = ing.ingest("identity_folders", root, out, image_size=SIZE, seed=0, top_k=2)
    assert info["classes"] == ["Ada_Lovelace", "Carl Sagan"]  # the two with most images
    check_common(out, info, 9)

    out = outputs(tmp_path / "min2")
    info = ing.ingest("auto", root, out, image_size=SIZE, seed=0, min_images=2)
    assert info["source"]["layout"] == "identity_folders"
    assert info["classes"] == ["Ada_Lovelace", "Bob Marley", "Carl Sagan"]


def celeba_tree(root: Path, names: bool = True) -> dict[int, int]:
    per_id = {2880: 4, 17: 2, 5: 6, 900: 1}
    lines, k = [], 0
    for ident, c in per_id.items():
        for _ in range(c):
            k += 1
            make_image(root / "img_align_celeba" / f"{k:06d}.jpg", (ident % 255, 80, 160), size=(36, 44))
            lines.append(f"{k:06d}.jpg {ident}")
    lines.append(f"{k + 1:06d}.jpg 17")  # listed but not downloaded: ignored
    (root / "identity_CelebA.txt").write_text("\n".join(lines) + "\n")
    if names:
        (root / "identity_names.txt").write_text("2880 Mira Castell\n5 Jon Doe\n17 Ann Lee\n")
    return per_id


def test_celeba_with_names_and_top_k(tmp_path):
    root = tmp_path / "celeba"
    celeba_tree(root)
    out = outputs(tmp_path / "out")
    info = ing.ingest("auto", root, out, image_size=SIZE, seed=7, top_k=3)
    assert info["source"]["layout"] == "celeba"
    # the 3 most frequent identities, in numeric id order
    assert info["classes"] == ["Jon Doe", "Ann Lee", "Mira Castell"]
    assert info["source"]["class_ids"] == ["5", "17", "2880"]
    samples = check_common(out, info, 12)
    assert {s.caption for s in samples} == set(info["classes"])
    check_webdataset(out["test"], info["counts"]["test"])


def test_celeba_without_names_uses_ids(tmp_path):
    root = tmp_path / "celeba"
    per_id = celeba_tree(root, names=False)
    out = outputs(tmp_path / "out")
    info = ing.ingest("celeba", root, out, image_size=SIZE, seed=7)
    assert info["classes"] == ["5", "17", "900", "2880"]
    assert "class_ids" not in info["source"]
    samples = check_common(out, info, sum(per_id.values()))
    lone = [s for s in samples if s.meta["label"] == "900"]
    assert len(lone) == 1 and lone[0].caption == "900"

    # a names file given in params, CSV with a header
    names = tmp_path / "names.csv"
    names.write_text('identity,name\n2880,"Castell, Mira"\n17,Ann Lee\n')
    info = ing.ingest("celeba", root, outputs(tmp_path / "o2"), image_size=SIZE, seed=7, names_file=names)
    assert info["classes"] == ["5", "Ann Lee", "900", "Castell, Mira"]


# ----------------------------------------------------------------- ImageNet
def test_imagenet_with_synset_mapping(tmp_path):
    root = tmp_path / "train"
    wnids = ["n01440764", "n02012849", "n03126707"]
    for k, w in enumerate(wnids):
        for i in range(3):
            make_image(root / w / f"{w}_{i}.JPEG", (60 * k, 20, 90), size=(50, 40), fmt="JPEG")
    make_image(root / wnids[0] / "gray.JPEG", (100, 100, 100), mode="L", fmt="JPEG")
    (root / "LOC_synset_mapping.txt").write_text(
        "n01440764 tench, Tinca tinca\nn02012849 crane\nn03126707 crane\nn09999999 unused\n"
    )
    out = outputs(tmp_path / "out")
    info = ing.ingest("imagenet", root, out, image_size=SIZE, seed=2, val_fraction=0.5)
    assert info["kind"] == "object"
    assert info["classes"] == ["tench", "crane (n02012849)", "crane (n03126707)"]
    assert info["source"]["class_ids"] == wnids
    samples = check_common(out, info, 10)
    for s in samples:
        assert s.meta["label_index"] == wnids.index(s.meta["file"].split("/")[0])
        assert s.caption == f"a photo of a {s.meta['label']}"


def test_read_names_file_formats(tmp_path):
    p = tmp_path / "n.txt"
    p.write_text("# comment\n\nn01 tench, Tinca tinca\n7,Some Name\n8\tOther Name\n")
    assert ing.read_names_file(p, first_synonym=True) == {"n01": "tench", "7": "Some Name", "8": "Other Name"}
    p.write_text("42\n")
    with pytest.raises(InputFileError, match="line 1"):
        ing.read_names_file(p)


# ------------------------------------------------------------------- stage
def test_ingest_eval_set_stage(tmp_path, capsys):
    root = tmp_path / "faces"
    for name in ("A", "B"):
        for i in range(2):
            make_image(root / name / f"{i}.webp", (10, 200, 10), fmt="WEBP")
    out = {k: str(v) for k, v in outputs(tmp_path / "out").items()}
    params = {"layout": "identity_folders", "root": str(root), "image_size": SIZE, "seed": 1,
              "val_fraction": 0.3, "max_per_class": None, "top_k": None, "min_images": 1, "names_file": None}
    ingest_eval_set({}, out, params)
    info = read_json(out["classes"])
    assert info["counts"] == {"val": 2, "test": 2} and info["classes"] == ["A", "B"]
    assert "of 2 identity classes" in capsys.readouterr().out


# ------------------------------------------------------------------ errors
def test_missing_root(tmp_path):
    with pytest.raises(InputFileError, match="not found") as e:
        ing.ingest("imagenet", tmp_path / "nope", outputs(tmp_path / "o"), image_size=SIZE, seed=0)
    assert str(tmp_path / "nope") in str(e.value)


@pytest.mark.parametrize("layout,expected", [
    ("unlearncanvas", "UnlearnCanvas"), ("celeba", "identity_CelebA.txt"),
    ("identity_folders", "identity-folder"), ("imagenet", "ImageNet"),
])
def test_empty_tree(tmp_path, layout, expected):
    root = tmp_path / "empty"
    (root / "some_dir").mkdir(parents=True)
    out = outputs(tmp_path / "o")
    with pytest.raises(UnlearnflowError, match="no images found") as e:
        ing.ingest(layout, root, out, image_size=SIZE, seed=0)
    assert expected in str(e.value) and str(root) in str(e.value)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_corrupt_image_named_and_no_output(tmp_path):
    root = tmp_path / "uc"
    unlearncanvas_tree(root)
    bad = root / "Van_Gogh" / "Dogs" / "9.jpg"
    bad.write_bytes(b"this is not a jpeg \x00\x01\x02" * 10)
    out = outputs(tmp_path / "out")
    with pytest.raises(InputFileError) as e:
        ing.ingest("unlearncanvas", root, out, image_size=SIZE, seed=0)
    assert str(bad) in str(e.value)
    assert not out["val"].exists() and not out["test"].exists() and not out["classes"].exists()
    assert list((tmp_path / "out").iterdir()) == []  # no temporary files left either


def test_empty_class_folder_and_bad_params(tmp_path):
    root = tmp_path / "faces"
    make_image(root / "A" / "0.jpg")
    make_image(root / "A" / "1.jpg")
    (root / "B").mkdir()
    out = outputs(tmp_path / "o")
    with pytest.raises(InputFileError, match="no images") as e:
        ing.ingest("identity_folders", root, out, image_size=SIZE, seed=0)
    assert str(root / "B") in str(e.value)
    make_image(root / "B" / "0.jpg")
    with pytest.raises(UnlearnflowError, match="min_images=5"):
        ing.ingest("identity_folders", root, out, image_size=SIZE, seed=0, min_images=5)
    with pytest.raises(UnlearnflowError, match="val_fraction"):
        ing.ingest("identity_folders", root, out, image_size=SIZE, seed=0, val_fraction=1.0)
    with pytest.raises(UnlearnflowError, match="layout 'laion' unknown"):
        ing.ingest("laion", root, out, image_size=SIZE, seed=0)
    with pytest.raises(InputFileError, match="names file not found"):
        ing.ingest("imagenet", root, out, image_size=SIZE, seed=0, names_file=tmp_path / "missing.txt")


def test_unreadable_images_are_skipped_counted_and_listed_up_to_a_share(tmp_path):
    root = tmp_path / "uc"
    n = unlearncanvas_tree(root)
    bad = root / "Van_Gogh" / "Dogs" / "9.jpg"
    bad.write_bytes(b"<html>not a picture</html>")
    out = outputs(tmp_path / "out")
    info = ing.ingest("unlearncanvas", root, out, image_size=SIZE, seed=0, max_unreadable=0.2, listing="abc")
    assert sum(info["counts"].values()) == n  # 9.jpg was an extra file
    assert info["source"]["unreadable"] == 1 and info["source"]["unreadable_files"][0]["file"] == "Van_Gogh/Dogs/9.jpg"
    assert info["source"]["listing"] == "abc"
    assert len(read_set(out)["val"]) + len(read_set(out)["test"]) == n
    # above the share: an error naming the files, nothing written
    for i in range(5):  # 6 bad of 24, 4 allowed
        (root / "Abstractionism" / "Dogs" / f"{i + 10}.jpg").write_bytes(b"\x00" * 10)
    out2 = outputs(tmp_path / "out2")
    with pytest.raises(InputFileError, match=r"unreadable of .*max_unreadable=0.2") as e:
        ing.ingest("unlearncanvas", root, out2, image_size=SIZE, seed=0, max_unreadable=0.2)
    assert "Abstractionism/Dogs/10.jpg" in str(e.value)
    assert not (tmp_path / "out2").exists() or not any((tmp_path / "out2").iterdir())


def test_a_tree_configured_as_another_kind_of_set_is_refused(tmp_path):
    root = tmp_path / "uc"
    unlearncanvas_tree(root)
    with pytest.raises(UnlearnflowError, match=r"data.eval.identities: .* is a tree of styles, not of identities"):
        ing.ingest("unlearncanvas", root, outputs(tmp_path / "o"), image_size=SIZE, seed=0, evalset="identities")
    info = ing.ingest("unlearncanvas", root, outputs(tmp_path / "o"), image_size=SIZE, seed=0, evalset="styles")
    assert info["kind"] == "style"
