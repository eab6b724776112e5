"""The judge of generated pictures: the trained default (renders of its own
stream, held-out accuracy, the min_accuracy guard), a user's timm
checkpoint (UnlearnCanvas's format, a changed file), UA / IRA / CRA and the
per-image labels from a judge, the side-by-side grid."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import small_synthetic
from unlearnflow.data.synthetic import SyntheticSpec, eval_samples, write_eval_set
from unlearnflow.io import InputFileError, UnlearnflowError
from unlearnflow.metrics import judge as J
from unlearnflow.stages import t2i as stages

SETS = ("identities", "objects", "styles")


@pytest.fixture(scope="module")
def eval_inputs(tmp_path_factory):
    """The rule inputs of train_judge / import_judge: test split + classes."""
    d = tmp_path_factory.mktemp("eval")
    spec = SyntheticSpec.from_params(small_synthetic())
    inp = {}
    for s in SETS:
        out = {k: d / s / f"{k}.tar" for k in ("val", "test")} | {"classes": d / s / "classes.json"}
        (d / s).mkdir()
        write_eval_set(spec, s, {"val": 1, "test": 6 if s != "styles" else 2}, out)
        inp[f"{s}_test"], inp[f"{s}_classes"] = str(out["test"]), str(out["classes"])
    return inp


@pytest.fixture(scope="module")
def trained(eval_inputs, tmp_path_factory):
    d = tmp_path_factory.mktemp("judge")
    out = {"info": d / "judge.json", "weights": d / "judge.safetensors"}
    params = {
        "name": "tiny_judge",
        "synthetic": small_synthetic(),
        "train": {"per_class": {"identities": 30, "objects": 30, "styles": 6}, "width": 8, "epochs": 15, "batch_size": 32},
        "min_accuracy": 0,
        "seed": 0,
        "device": "cpu",
    }
    stages.train_judge(eval_inputs, out, params)
    return out, params


def test_judge_stream_is_its_own():
    """No picture of the judge's training stream is a val / test picture."""
    spec = SyntheticSpec.from_params(small_synthetic())
    for s in SETS:
        judge = {x.files["jpg"] for x in eval_samples(spec, s, "judge", 2)}
        held = {x.files["jpg"] for split in ("val", "test") for x in eval_samples(spec, s, split, 2)}
        assert judge and not judge & held


def test_trained_judge_reads_held_out_renders(trained, eval_inputs):
    out, _ = trained
    info = json.loads(out["info"].read_text())
    held = info["heldout"]
    assert set(held) == {"identity", "object", "style"}
    # 6 identities, 5 objects, 3 styles: chance is 17 / 20 / 33 % (this judge
    # is trained for 25 s; the default's reaches 97-100 %, docs/fidelity.md)
    assert held["identity"]["accuracy"] >= 40 and held["style"]["accuracy"] >= 80 and held["object"]["accuracy"] >= 50, held
    assert held["object"]["n"] == 6 * 5 + 2 * 3 * 5  # object photos and styled objects
    judge = J.load_judge(out["info"])
    images, names = J.heldout_images(stages._eval_sets(eval_inputs), "identity")
    pred = judge.predict(images, "identity")
    assert pred.shape == (len(names),) and pred.dtype == torch.long
    # the saved judge is the scored one
    acc = 100 * float((pred == judge.index_of("identity", names)).float().mean())
    assert acc == pytest.approx(held["identity"]["accuracy"], abs=0.01)
    assert "identity" in judge.describe() and "tiny_judge" in judge.describe()


def test_a_judge_below_min_accuracy_fails_and_writes_nothing(eval_inputs, tmp_path):
    out = {"info": tmp_path / "judge.json", "weights": tmp_path / "judge.safetensors"}
    params = {"name": "weak", "synthetic": small_synthetic(), "seed": 0, "min_accuracy": 99.9,
              "train": {"per_class": {"identities": 2, "objects": 2, "styles": 1}, "width": 4, "epochs": 1}}  # fmt: skip
    with pytest.raises(UnlearnflowError, match="min_accuracy"):
        stages.train_judge(eval_inputs, out, params)
    assert not out["info"].exists() and not out["weights"].exists()


def test_judge_names_a_concept_it_does_not_know(trained):
    judge = J.load_judge(trained[0]["info"])
    with pytest.raises(UnlearnflowError, match="Zora Quill"):
        judge.index_of("identity", ["Mira Castell", "Zora Quill"])
    with pytest.raises(UnlearnflowError, match="no style head|judges"):
        J.Judge("x", "train", {"identity": ["a"]}, lambda x, d: x).predict(torch.zeros(1, 3, 4, 4), "style")


def _unlearncanvas_like(path, classes, seed=0):
    """A tiny timm ViT saved the way UnlearnCanvas saves its classifiers."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model("test_vit", pretrained=False, num_classes=len(classes), img_size=32)
    torch.save({"model_state_dict": model.state_dict(), "epoch": 3}, path)
    return model


def test_checkpoint_judge_loads_unlearncanvas_format_and_detects_a_change(eval_inputs, tmp_path):
    classes = {d: json.loads(open(eval_inputs[f"{s}_classes"]).read())["classes"] for d, s in J.EVAL_SET_OF.items()}
    heads = {}
    for d in ("style", "object"):
        path = tmp_path / f"{d}.pth"
        model = _unlearncanvas_like(path, classes[d], seed=len(d))
        heads[d] = {"arch": "test_vit", "checkpoint": str(path), "classes": classes[d], "image_size": 32,
                    "state_key": "model_state_dict", "timm_kwargs": {"img_size": 32}}  # fmt: skip
    out = {"info": tmp_path / "judge.json"}
    stages.import_judge(eval_inputs, out, {"name": "uc", "kind": "checkpoint", "heads": heads, "device": "cpu"})
    info = json.loads(out["info"].read_text())
    assert set(info["heldout"]) == {"style", "object"} and all(len(h["sha256"]) == 64 for h in info["heads"].values())
    judge = J.load_judge(out["info"])
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    # the same logits as the saved model on UnlearnCanvas's transform (/255, mean = std = 0.5)
    model.eval()
    with torch.no_grad():
        want = model((x.float() / 255 - 0.5) / 0.5).argmax(1)
    assert torch.equal(judge.predict(x, "object"), want)
    # a wrong state key and a changed file are errors naming the file
    bad = {**heads["style"], "state_key": "state"}
    with pytest.raises(InputFileError, match="style.pth.*'state'"):
        stages.import_judge(eval_inputs, {"info": tmp_path / "bad.json"}, {"name": "uc", "kind": "checkpoint", "heads": {"style": bad}})
    _unlearncanvas_like(tmp_path / "style.pth", classes["style"], seed=9)
    with pytest.raises(InputFileError, match="style.pth.*rerun import_judge"):
        J.load_judge(out["info"])


def test_scores_and_labels_follow_the_judge(tmp_path):
    """UA / IRA / CRA are the judge's: a judge that calls every picture by a
    fixed class gives exactly the expected rates, and the predictions table
    holds its label per picture."""
    from unlearnflow.metrics.t2i_eval import _domain_scores
    from unlearnflow.metrics.judge import Judge, correctness, predictions

    classes = {"identity": ["Mira Castell", "Bram Okafor", "Ines Duval"], "object": ["ball", "kite"]}
    # the judge answers by the picture's mean red value: 0 -> class 0, 255 -> class 1
    judge = Judge("fake", "train", classes, lambda x, d: (x[:, 0].float().mean((1, 2)) > 127).long())
    forget_labels = [{"identity": "Mira Castell"}] * 4
    forget = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    forget[:3] = 255  # three of four read as Bram Okafor: UA 75
    retain_labels = [{"identity": "Bram Okafor"}, {"identity": "Ines Duval"}, {"object": "ball"}, {"object": "kite"}]
    retain = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    retain[[0, 3]] = 255  # Bram right, Ines wrong (read as Mira); ball right, kite right
    acc = {"forget": correctness(judge, forget, forget_labels), "retain": correctness(judge, retain, retain_labels)}
    scores = _domain_scores(acc, "identity")
    assert scores == {"ua": 75.0, "ira": 50.0, "cra": 100.0}
    assert predictions(judge, retain, retain_labels) == [
        {"identity": "Bram Okafor"}, {"identity": "Mira Castell"}, {"object": "ball"}, {"object": "kite"},
    ]  # fmt: skip
    assert np.isnan(acc["retain"]["identity"][2])


def test_compare_grid_puts_models_side_by_side_and_refuses_other_prompts():
    from PIL import Image

    from unlearnflow.generate import compare_grid

    rows = pd.DataFrame({"set": ["forget", "forget", "retain", "retain"], "prompt": ["a", "a", "b", "b"], "seed": [0, 1, 0, 1],
                         "predicted": [json.dumps({"identity": "X"})] * 4, "correct": [True, False, True, True]})  # fmt: skip
    imgs = {m: torch.full((4, 3, 8, 8), v, dtype=torch.uint8) for m, v in (("base", 0), ("slug", 200))}
    grid = compare_grid(imgs, {"base": rows, "slug": rows}, upscale=3)
    assert isinstance(grid, Image.Image)
    px = np.asarray(grid)
    # both models' pictures are on the canvas: black blocks and grey blocks
    assert (px == 0).all(-1).sum() >= 4 * 24 * 24 and (px == 200).all(-1).sum() >= 4 * 24 * 24
    with pytest.raises(UnlearnflowError, match="'slug' was generated from other prompts"):
        compare_grid(imgs, {"base": rows, "slug": rows.assign(seed=[0, 1, 0, 2])})


def test_clip_judge_is_scored_and_needs_the_clip(eval_inputs, tmp_path):
    """kind clip: the zero-shot CLIP as judge, scored held out like the others."""
    import open_clip

    from unlearnflow.models.clip import load_clip, save_clip, tiny_config

    torch.manual_seed(0)
    cfg = tiny_config()
    clip_dir = tmp_path / "clip"
    save_clip(open_clip.CLIP(**cfg).eval(), cfg, clip_dir, {"source": "test"})
    out = {"info": tmp_path / "judge.json"}
    stages.import_judge({**eval_inputs, "clip_config": str(clip_dir / "open_clip_config.json")}, out,
                   {"name": "zs", "kind": "clip", "device": "cpu"})  # fmt: skip
    info = json.loads(out["info"].read_text())
    assert info["kind"] == "clip" and set(info["heldout"]) == {"identity", "object", "style"}
    with pytest.raises(UnlearnflowError, match="needs the CLIP"):
        J.load_judge(out["info"])
    judge = J.load_judge(out["info"], clip_bundle=load_clip(clip_dir))
    images, names = J.heldout_images(stages._eval_sets(eval_inputs), "style")
    acc = 100 * float((judge.predict(images, "style") == judge.index_of("style", names)).float().mean())
    assert acc == pytest.approx(info["heldout"]["style"]["accuracy"], abs=0.01)
