"""Robustness attacks: the token injection they share, CLIP's paraphrase and
soft-prompt attacks on a tiny random CLIP, relearning, and the table."""

from __future__ import annotations

import copy
import json
import types

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import small_config
from unlearnflow.attacks import TokenInjection, find_span, frame, merge_params, name_token_ids, robustness_table, row
from unlearnflow.attacks import clip as clip_attacks
from unlearnflow.io import UnlearnflowError
from unlearnflow.metrics.clip_eval import EvalSuite
from unlearnflow.metrics.zeroshot import LabelledImages

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
NAMES = ["Mira Castell", "Bram Okafor", "Ines Duval"]


@pytest.fixture(scope="module")
def bundle():
    import open_clip

    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CLIP).eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=16)
    return types.SimpleNamespace(model=model, tokenizer=tokenizer, preprocess=None)


def test_injecting_a_names_own_embeddings_changes_nothing(bundle):
    model, tok = bundle.model, bundle.tokenizer
    tokens = tok(["a photo of Mira Castell.", "Mira Castell."])
    ids = name_token_ids(tok, "Mira Castell")
    assert len(ids) >= 2 and tok.decode(ids).strip() == "mira castell"
    spans = [(r, find_span(tokens[r], ids, "test")) for r in range(2)]
    assert spans[0][1] == 4 and spans[1][1] == 1  # after the start token and "a photo of"
    own = model.token_embedding.weight[ids].detach()
    with torch.no_grad():
        plain = model.encode_text(tokens)
        with TokenInjection(model.token_embedding, spans, own):
            same = model.encode_text(tokens)
        with TokenInjection(model.token_embedding, spans, torch.zeros_like(own)):
            other = model.encode_text(tokens)
        per_span = torch.stack([own, torch.zeros_like(own)])  # one set of vectors per span
        with TokenInjection(model.token_embedding, spans, per_span):
            mixed = model.encode_text(tokens)
    assert torch.allclose(plain, same, atol=1e-6)
    assert not torch.allclose(plain, other, atol=1e-3)
    assert torch.allclose(mixed[0], plain[0], atol=1e-6) and torch.allclose(mixed[1], other[1], atol=1e-6)
    assert torch.equal(model.encode_text(tokens), plain)  # the hook is gone after the context
    with pytest.raises(UnlearnflowError, match="not in the prompt"):
        find_span(tok(["a photo of Bram Okafor."])[0], ids, "test")


def colour_suite(n_per_class: int, seed: int) -> EvalSuite:
    """Identity images that a random vision tower tells apart: one flat
    colour per identity, plus noise (the objects set is a stand-in)."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.tensor([[1.5, -1.0, -1.0], [-1.0, 1.5, -1.0], [-1.0, -1.0, 1.5]])
    labels = torch.arange(3).repeat_interleave(n_per_class)
    images = colours[labels][:, :, None, None] + 0.3 * torch.randn(len(labels), 3, 32, 32, generator=g)
    ids = LabelledImages(images, labels, [str(i) for i in range(len(labels))])
    return EvalSuite(ids, NAMES, ids, ["ball", "crate", "star"], target_name="Mira Castell", target_kind="identity")


def test_the_soft_prompt_recovers_a_concept_its_name_no_longer_finds(bundle):
    # a random text tower: the name points nowhere, FA@1 starts far from 100
    att = clip_attacks.Attacker(bundle, colour_suite(8, seed=1), "cpu")
    train = colour_suite(16, seed=2)  # other pictures of the same identities
    feats = att.model.encode_image(train.identities.images).detach()
    result = clip_attacks.soft_prompt_attack(att, F.normalize(feats, dim=-1), train.identities.labels, {"steps": 150, "lr": 0.05}, seed=0)
    assert att.before["fa1"] < 60
    assert result["after"] == 100.0 and result["record"]["identity_acc1"] >= 50  # not "everything is Mira"
    assert result["trace"][-1]["loss"] < result["trace"][0]["loss"] and result["moved"] > 0
    again = clip_attacks.soft_prompt_attack(att, F.normalize(feats, dim=-1), train.identities.labels, {"steps": 150, "lr": 0.05}, seed=0)
    assert again == result  # full-batch Adam from the name's embeddings: nothing random
    assert all(not p.requires_grad for p in att.model.parameters())  # the model stays frozen


def test_paraphrase_variants_skip_prompts_the_tokenizer_reads_as_the_standard_one(bundle):
    variants = clip_attacks.paraphrase_variants("identity", "Mira Castell", ["Mira Castell at the premiere"] * 3, 64)
    assert variants["surname"] == ["Castell."] and variants["first_name"] == ["Mira."]
    assert variants["snake_case"] == ["Mira_Castell."] and variants["captions"] == ["Mira Castell at the premiere"]
    att = clip_attacks.Attacker(bundle, colour_suite(4, seed=1), "cpu")
    summary, per_variant = clip_attacks.paraphrase_attack(att, ["Mira Castell at the premiere"], {"captions": 64})
    # open_clip's tokenizer lower-cases: "mira castell." is the standard prompt, not an attack
    assert summary["same_tokens"] == ["lower", "upper"]
    assert {v["variant"] for v in per_variant} == {"templates", "snake_case", "surname", "first_name", "captions"}
    assert summary["after"] == max(v["fa1"] for v in per_variant)
    assert "style" not in clip_attacks.paraphrase_variants("object", "kite", [], 64)


def test_unknown_attack_params_are_named():
    with pytest.raises(UnlearnflowError, match=r"attacks.clip.soft_prompt: unknown params \['step'\]"):
        merge_params(clip_attacks.SOFT_PROMPT_DEFAULTS, {"step": 3, "enabled": True}, "attacks.clip.soft_prompt")


def test_the_table_puts_the_original_first_and_refuses_other_files(tmp_path):
    rows = [
        row("clip", "mira", "slug", "paraphrase", "fa1", 0, 12.5, "5 variants", 1.0),
        row("clip", "mira", "original", "paraphrase", "fa1", 100, 100, "5 variants", 1.0),
        row("clip", "mira", "slug", "relearn", "fa1", 0, 80, "8 pairs", 2.0, curve=[{"step": 0, "fa1": 0.0}]),
    ]
    df = robustness_table([frame(rows[:2]), frame(rows[2:])])
    assert list(df.columns)[-1] == "provenance"
    assert df["method"].tolist() == ["original", "slug", "slug"] and df["attack"].tolist()[1:] == ["paraphrase", "relearn"]
    assert json.loads(frame(rows)["details"][2]) == {"curve": [{"fa1": 0.0, "step": 0}]}
    from unlearnflow.io import write_parquet
    from unlearnflow.stages import attacks as stages

    write_parquet(tmp_path / "x.parquet", pd.DataFrame({"a": [1]}))
    out = {k: str(tmp_path / f"t.{k}") for k in ("csv", "md", "tex")}
    with pytest.raises(UnlearnflowError, match="x.parquet: not an attack file"):
        stages.robustness_table({"attacks": [str(tmp_path / "x.parquet")]}, out, {"caption": "c"})


# ------------------------------------------------------------------ DAG
def test_clip_attacks_in_the_dag(workflow):
    from test_workflow import job_counts

    cfg = small_config(run_methods=["ga"])
    cfg["targets"] = cfg["targets"][:1]
    cfg["methods"] = {"ga": {"epochs": 2}}
    cfg["attacks"] = {"clip": {"soft_prompt": {"steps": 40}, "relearn": {"steps": 4, "eval_at": [0, 2, 4]}}}
    evals = [f"results/eval/tiny_clip/mira_castell/{m}.json" for m in ("base", "ga")]
    workflow.run("results/tables/robustness.csv", *evals, cfg=cfg)
    res = workflow.workdir / "results"
    df = pd.read_csv(res / "tables/robustness.csv")
    assert list(df.columns) == ["family", "target", "method", "attack", "metric", "before", "after", "budget", "seconds", "provenance"]
    assert df["method"].tolist() == ["original"] * 3 + ["ga"] * 3
    assert df["attack"].tolist() == ["paraphrase", "soft_prompt", "relearn"] * 2
    # before = the unattacked model's FA@1, the number its evaluation reports
    for method, name in (("original", "base"), ("ga", "ga")):
        fa1 = json.loads((res / f"eval/tiny_clip/mira_castell/{name}.json").read_text())["fa1"]
        assert df.loc[df.method == method, "before"].tolist() == pytest.approx([fa1] * 3, abs=0.006)
    relearn = pd.read_parquet(res / "attacks/clip/tiny_clip/mira_castell/ga.relearn.parquet")
    curve = json.loads(relearn["details"][0])["curve"]
    assert [c["step"] for c in curve] == [0, 2, 4] and curve[-1]["fa1"] == pytest.approx(relearn["after"][0])
    assert "Robustness of unlearning" in (res / "tables/robustness.md").read_text()
    # every row resolves to its attack job's record: the model it attacked, the seed
    records = json.loads((res / "tables/robustness.provenance.json").read_text())
    for _, r in df.iterrows():
        rec = records[r["provenance"]]
        assert rec["rule"] in ("attack_clip", "relearn_clip") and rec["seeds"]["attack"] == 0
        assert (rec["model"]["delta_sha256"] is None) == (r["method"] == "original")

    # deterministic for its seed: a forced rerun gives the same rows
    first = pd.read_parquet(res / "attacks/clip/tiny_clip/mira_castell/ga.parquet")
    workflow.run("results/tables/robustness.csv", "--forcerun", "attack_clip", cfg=cfg)
    second = pd.read_parquet(res / "attacks/clip/tiny_clip/mira_castell/ga.parquet")
    assert first.drop(columns=["seconds"]).equals(second.drop(columns=["seconds"]))

    # an attack's params rerun that attack and the table, nothing else
    cfg2 = copy.deepcopy(cfg)
    cfg2["attacks"]["clip"]["soft_prompt"]["lr"] = 0.05
    _, out = workflow.run("results/tables/robustness.csv", "-n", cfg=cfg2)
    assert job_counts(out) == {"attack_clip": 2, "robustness_table": 1}
    cfg3 = copy.deepcopy(cfg)
    cfg3["seeds"] = {"attack": 1}
    _, out = workflow.run("results/tables/robustness.csv", "-n", cfg=cfg3)
    assert job_counts(out) == {"attack_clip": 2, "relearn_clip": 2, "robustness_table": 1}
