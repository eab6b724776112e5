"""Zero-shot and membership-inference metrics on hand-made tensors and a tiny
random-init open_clip model (no weights are downloaded)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import IDENTITIES, OBJECTS, STYLES, small_synthetic
from unlearnflow.io import UnlearnflowError
from unlearnflow.metrics import mia, zeroshot

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def tiny_clip():
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CLIP).eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=16)
    preprocess = open_clip.image_transform(32, is_train=False)
    return model, tokenizer, preprocess


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory):
    from unlearnflow.data.synthetic import SyntheticSpec, write_eval_set

    d = tmp_path_factory.mktemp("eval_identities")
    spec = SyntheticSpec.from_params(
        small_synthetic(identities=IDENTITIES[:3], objects=OBJECTS[:2], styles=STYLES[:1])
    )
    outputs = {"val": d / "val.tar", "test": d / "test.tar", "classes": d / "classes.json"}
    write_eval_set(spec, "identities", {"val": 2, "test": 3}, outputs)
    return outputs


# ------------------------------------------------------------ topk_correct
def test_topk_correct_known_answers_and_k_capped():
    classifier = torch.eye(3)  # features are the logits (up to the factor 100)
    feats = torch.tensor(
        [
            [3.0, 2.0, 1.0],  # label 0: rank 1
            [1.0, 3.0, 2.0],  # label 0: rank 3
            [3.0, 2.0, 1.0],  # label 1: rank 2
            [1.0, 2.0, 3.0],  # label 2: rank 1
        ]
    )
    labels = torch.tensor([0, 0, 1, 2])
    hits = zeroshot.topk_correct(feats, classifier, labels, ks=(1, 2, 5))
    assert set(hits) == {1, 2, 5}
    assert hits[1].tolist() == [True, False, False, True]
    assert hits[2].tolist() == [True, False, True, True]
    assert hits[5].tolist() == [True, True, True, True]  # 5 > 3 classes: capped
    assert hits[1].dtype == torch.bool and hits[1].shape == (4,)


def test_topk_correct_rejects_bad_shapes_and_labels():
    with pytest.raises(UnlearnflowError, match="labels outside"):
        zeroshot.topk_correct(torch.eye(3), torch.eye(3), torch.tensor([0, 1, 3]))
    with pytest.raises(UnlearnflowError, match="shapes"):
        zeroshot.topk_correct(torch.eye(3), torch.eye(4), torch.tensor([0, 1, 2]))


# --------------------------------------------------------- identity_scores
# 6 identities, classifier = identity, so each feature row is the logit vector.
# Class 0 (Mira Castell) is the target; class 5 has no images.
ROWS = [
    ([5, 4, 3, 2, 1, 0], 0),  # target: top-1 right
    ([4, 5, 3, 2, 1, 0], 0),  # target: rank 2
    ([0, 5, 4, 3, 2, 1], 0),  # target: last of 6 -> wrong even at top-5
    ([0, 5, 4, 3, 2, 1], 1),  # right
    ([5, 4, 3, 2, 1, 0], 1),  # rank 2
    ([5, 4, 3, 2, 1, 0], 2),  # rank 3
    ([0, 1, 2, 5, 4, 3], 3),  # right
    ([0, 1, 2, 3, 5, 4], 4),  # right
    ([5, 4, 3, 2, 0, 1], 4),  # last
]
FEATS = torch.tensor([r for r, _ in ROWS], dtype=torch.float32)
LABELS = torch.tensor([label for _, label in ROWS])
CLASSIFIER = torch.eye(6)


def test_identity_scores_hand_computed():
    s = zeroshot.identity_scores(FEATS, LABELS, CLASSIFIER, IDENTITIES, "Mira Castell")
    assert s["target"] == "Mira Castell"
    assert s["n_forget_images"] == 3
    assert s["fa1"] == pytest.approx(100 / 3)
    assert s["fa5"] == pytest.approx(200 / 3)
    # per identity (target and image-less class 5 excluded):
    # Bram 50/100, Ines 0/100, Tomas 100/100, Lena 50/50
    assert s["n_identities"] == 4
    assert s["identity_acc1"] == pytest.approx((50 + 0 + 100 + 50) / 4)
    assert s["identity_acc5"] == pytest.approx((100 + 100 + 100 + 50) / 4)
    assert s["per_identity"]["Lena Holt"] == {"n": 2, "acc1": 50.0, "acc5": 50.0}
    assert "Mira Castell" not in s["per_identity"] and "Oskar Brandt" not in s["per_identity"]


def test_identity_scores_all_target_images_correct():
    feats = torch.eye(6)[[0, 0, 0, 1, 2]]
    labels = torch.tensor([0, 0, 0, 1, 2])
    s = zeroshot.identity_scores(feats, labels, CLASSIFIER, IDENTITIES, "Mira Castell")
    assert (s["fa1"], s["fa5"], s["identity_acc1"], s["identity_acc5"]) == (100.0, 100.0, 100.0, 100.0)


def test_identity_scores_without_target_counts_every_identity():
    s = zeroshot.identity_scores(FEATS, LABELS, CLASSIFIER, IDENTITIES, None)
    assert math.isnan(s["fa1"]) and math.isnan(s["fa5"]) and s["n_forget_images"] == 0
    assert s["n_identities"] == 5
    assert s["identity_acc1"] == pytest.approx((100 / 3 + 50 + 0 + 100 + 50) / 5)


@pytest.mark.parametrize("name", ["mira_castell", "MIRA CASTELL", " Mira  Castell ", "Mira_Castell"])
def test_identity_target_name_variants(name):
    s = zeroshot.identity_scores(FEATS, LABELS, CLASSIFIER, IDENTITIES, name)
    assert s["target"] == "Mira Castell" and s["n_forget_images"] == 3


def test_identity_unknown_target_lists_names():
    with pytest.raises(UnlearnflowError) as exc:
        zeroshot.identity_scores(FEATS, LABELS, CLASSIFIER, IDENTITIES, "Nobody Known")
    msg = str(exc.value)
    assert "Nobody Known" in msg and all(n in msg for n in IDENTITIES)


def test_identity_target_without_images_is_an_error():
    with pytest.raises(UnlearnflowError, match="no images of the target"):
        zeroshot.identity_scores(FEATS, LABELS, CLASSIFIER, IDENTITIES, "Oskar Brandt")


# ----------------------------------------------------------- object_scores
def test_object_scores_plain_mean_and_excluded_target():
    s = zeroshot.object_scores(FEATS, LABELS, CLASSIFIER)
    # top-1 right: rows 0, 3, 6, 7; top-5 wrong: rows 2, 8
    assert s["test_acc1"] == pytest.approx(400 / 9)
    assert s["test_acc5"] == pytest.approx(700 / 9)
    assert s["n_images"] == 9 and math.isnan(s["fa1"])
    s = zeroshot.object_scores(FEATS, LABELS, CLASSIFIER, exclude_label=0)
    assert s["fa1"] == pytest.approx(100 / 3) and s["fa5"] == pytest.approx(200 / 3)
    assert s["test_acc1"] == pytest.approx(300 / 6) and s["test_acc5"] == pytest.approx(500 / 6)
    assert s["n_images"] == 6 and s["n_forget_images"] == 3


# ------------------------------------------------- encoders (tiny open_clip)
def test_text_classifier_matches_manual_single_template(tiny_clip):
    model, tokenizer, _ = tiny_clip
    names = IDENTITIES[:4]
    model.train()  # the classifier is built in eval mode, the caller's mode is restored
    try:
        W = zeroshot.text_classifier(model, tokenizer, names, zeroshot.IDENTITY_TEMPLATES)
        assert model.training
    finally:
        model.eval()
    assert W.shape == (32, 4) and W.dtype == torch.float32
    torch.testing.assert_close(W.norm(dim=0), torch.ones(4))
    with torch.no_grad():
        manual = F.normalize(model.encode_text(tokenizer([f"{n}." for n in names])), dim=-1).T
    torch.testing.assert_close(W, manual, atol=1e-5, rtol=1e-5)


def test_text_classifier_averages_templates(tiny_clip):
    model, tokenizer, _ = tiny_clip
    W = zeroshot.text_classifier(model, tokenizer, ["ball"], zeroshot.SIMPLE_TEMPLATES)
    texts = [t.format(c="ball") for t in zeroshot.SIMPLE_TEMPLATES]
    assert texts[0] == "itap of a ball." and len(texts) == 7
    with torch.no_grad():
        mean = F.normalize(model.encode_text(tokenizer(texts)), dim=-1).mean(0)
    torch.testing.assert_close(W[:, 0], F.normalize(mean, dim=0), atol=1e-5, rtol=1e-5)


def test_encode_images_normalised_and_batch_invariant(tiny_clip):
    model = tiny_clip[0]
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    a = zeroshot.encode_images(model, images, batch_size=2)
    b = zeroshot.encode_images(model, images, batch_size=256)
    assert a.shape == (5, 32) and a.dtype == torch.float32
    torch.testing.assert_close(a.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_load_labelled_and_end_to_end(tiny_clip, eval_set):
    model, tokenizer, preprocess = tiny_clip
    data = zeroshot.load_labelled(eval_set["test"], preprocess)
    assert data.images.shape == (9, 3, 32, 32) and data.images.dtype == torch.float32
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert len(data) == 9 and data.keys[0] == "identities_test_0000_00000"
    one = zeroshot.load_labelled(eval_set["test"], preprocess, max_per_class=1)
    assert one.labels.tolist() == [0, 1, 2] and one.images.shape[0] == 3

    names = zeroshot.read_classes(eval_set["classes"])
    assert names == IDENTITIES[:3]
    feats = zeroshot.encode_images(model, data.images)
    W = zeroshot.text_classifier(model, tokenizer, names)
    s = zeroshot.identity_scores(feats, data.labels, W, names, "mira_castell")
    assert s["n_forget_images"] == 3 and s["n_identities"] == 2
    assert 0 <= s["fa1"] <= 100 and s["fa5"] == 100.0  # top-5 of 3 classes
    assert s["identity_acc5"] == 100.0


# -------------------------------------------------------------------- MIA
def test_pair_cosine_rowwise():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    b = np.array([[2.0, 0.0], [-1.0, -1.0], [0.0, 3.0]])
    np.testing.assert_allclose(mia.pair_cosine(a, b), [1.0, -1.0, 0.0], atol=1e-6)


def test_encode_pairs_matches_manual(tiny_clip, eval_set):
    model, tokenizer, preprocess = tiny_clip
    cos = mia.encode_pairs(model, tokenizer, eval_set["test"], preprocess, batch_size=4)
    assert cos.shape == (9,) and np.all(np.abs(cos) <= 1 + 1e-6)
    first = mia.encode_pairs(model, tokenizer, eval_set["test"], preprocess, batch_size=256, max_pairs=2)
    np.testing.assert_allclose(first, cos[:2], atol=1e-5)

    from unlearnflow.data.shards import iter_samples

    s = next(iter_samples(eval_set["test"]))
    with torch.no_grad():
        img = model.encode_image(preprocess(s.image())[None])
        txt = model.encode_text(tokenizer([s.caption]))
    assert cos[0] == pytest.approx(F.cosine_similarity(img, txt).item(), abs=1e-5)


def test_mia_chance_for_identical_distributions():
    rng = np.random.RandomState(0)
    r = mia.mia_accuracy(rng.normal(0.3, 0.05, 200), rng.normal(0.3, 0.05, 200))
    assert abs(r["mean"] - 50) < 15
    assert len(r["per_seed"]) == 10 and r["n_per_class"] == 200


def test_mia_detects_separated_scores_and_balances_classes():
    rng = np.random.RandomState(1)
    r = mia.mia_accuracy(rng.normal(0.5, 0.02, 300), rng.normal(0.2, 0.02, 60), seeds=range(3))
    assert r["mean"] > 90
    assert r["n_per_class"] == 60 and r["n_members"] == 300 and r["n_nonmembers"] == 60


def test_mia_deterministic_for_seeds():
    rng = np.random.RandomState(2)
    m, h = rng.normal(0.32, 0.05, 80), rng.normal(0.3, 0.05, 50)
    a = mia.mia_accuracy(m, h, seeds=range(3))
    b = mia.mia_accuracy(m, h, seeds=range(3))
    assert a == b
    assert a["per_seed"][0] == mia.mia_accuracy(m, h, seeds=[0])["mean"]


def test_mia_too_few_samples():
    with pytest.raises(UnlearnflowError, match="3 members .* 10 non-members"):
        mia.mia_accuracy([0.1, 0.2, 0.3], np.linspace(0, 1, 10))


def test_mia_test_size_is_the_reference_share_and_small_sets_fail_loudly():
    from sklearn.model_selection import StratifiedShuffleSplit

    rng = np.random.RandomState(4)
    m, h = rng.normal(0.34, 0.05, 40), rng.normal(0.3, 0.05, 40)
    r = mia.mia_accuracy(m, h, seeds=[0])
    assert r["test_size"] == 0.1 == mia.TEST_SIZE and r["test_pairs"] == 8
    # the split it scores on: 10 stratified splits with 8 of the 80 pairs held out
    split = next(StratifiedShuffleSplit(10, test_size=0.1, random_state=0).split(np.r_[m, h][:, None], np.r_[np.ones(40), np.zeros(40)]))
    assert len(split[1]) == 8
    # accuracies on 8 test pairs are multiples of 12.5 %: the mean of one seed is their average
    assert (r["per_seed"][0] * 10 / 12.5) == pytest.approx(round(r["per_seed"][0] * 10 / 12.5))
    assert r != mia.mia_accuracy(m, h, seeds=[0], test_size=0.3)
    # 0.1 of 2 x 6 pairs is no stratified test set: a clear error, not sklearn's
    with pytest.raises(UnlearnflowError, match="test_size 0.1 needs at least 10 pairs per class; got 6 members"):
        mia.mia_accuracy(m[:6], h[:6])
    assert mia.mia_accuracy(m[:6], h[:6], test_size=0.3)["n_per_class"] == 6
    with pytest.raises(UnlearnflowError, match="test_size 1.5"):
        mia.mia_accuracy(m, h, test_size=1.5)
