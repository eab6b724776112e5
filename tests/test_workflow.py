"""The Snakemake DAG of the data stages, run for real in a scratch directory."""

import copy
import json
import re

import pytest
import yaml
from PIL import Image

from conftest import REPO, small_config
from unlearnflow.data.select import Matcher
from unlearnflow.data.shards import iter_samples


def job_counts(out: str) -> dict:
    """The 'Job stats' table of a dry run, as {rule: count}."""
    table = out.split("Job stats:", 1)[1].split("Reasons:", 1)[0]
    counts = {}
    for line in table.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


def test_data_stages_end_to_end_and_reruns(workflow):
    cfg = small_config()
    cfg["selection"]["shared_retain"] = True
    workflow.run("data", cfg=cfg)
    res = workflow.workdir / "results/data"
    # one retain set for both targets (selection.shared_retain, the default)
    retain = list(iter_samples(res / "shared/retain.tar"))
    assert len(retain) == json.loads((res / "shared/retain_summary.json").read_text())["retain"] == 100
    for target, name in (("mira_castell", "Mira Castell"), ("kite", "kite")):
        m = Matcher(name)
        forget = list(iter_samples(res / target / "forget.tar"))
        summary = json.loads((res / target / "summary.json").read_text())
        assert forget and all(m(s.caption) for s in forget)
        assert not any(m(s.caption) for s in retain)
        assert summary["forget"] == len(forget) and summary["retain"] == "shared"
        assert not (res / target / "retain.tar").exists()
        assert len(summary["shards"]) == 2
    for evalset in ("identities", "objects", "styles"):
        classes = json.loads((res / "eval" / evalset / "classes.json").read_text())
        assert sum(1 for _ in iter_samples(res / "eval" / evalset / "test.tar")) == classes["counts"]["test"]
    assert (workflow.workdir / "logs/select_sets/kite.log").read_text()
    assert (workflow.workdir / "results/benchmarks/synthetic_shard/00000.tsv").exists()

    # a second run has nothing to do
    _, out = workflow.run("data", "-n")
    assert "Nothing to be done" in out

    # a new retain size reruns only the shared retain set, not the shards, eval sets or forget sets
    shard_mtime = (res / "laion/00000.tar").stat().st_mtime_ns
    eval_mtime = (res / "eval/objects/val.tar").stat().st_mtime_ns
    cfg2 = copy.deepcopy(cfg)
    cfg2["selection"]["retain_size"] = 60
    _, out = workflow.run("data", "-n", cfg=cfg2)
    assert job_counts(out) == {"select_retain": 1, "data": 1}
    workflow.run("data", cfg=cfg2)
    assert json.loads((res / "shared/retain_summary.json").read_text())["retain"] == 60
    # per-target retain sets (shared_retain: false): one each, naming only its target
    own = copy.deepcopy(cfg2)
    own["selection"]["shared_retain"] = False
    _, out = workflow.run("data", "-n", cfg=own)
    assert job_counts(out) == {"select_sets": 2, "data": 1}
    workflow.run("data", cfg=own)
    assert json.loads((res / "kite/summary.json").read_text())["retain"] == 60
    assert (res / "laion/00000.tar").stat().st_mtime_ns == shard_mtime
    assert (res / "eval/objects/val.tar").stat().st_mtime_ns == eval_mtime

    # a new eval size reruns only that kind of eval set
    cfg3 = copy.deepcopy(own)
    cfg3["data"]["eval"]["objects"]["per_class"]["test"] = 4
    _, out = workflow.run("data", "-n", cfg=cfg3)
    assert job_counts(out) == {"synthetic_eval_set": 1, "data": 1}


def test_schema_errors_name_the_key_and_allowed_values(workflow):
    cfg = small_config()
    cfg["selection"]["retain_sise"] = 5
    code, out = workflow.run("-n", cfg=cfg, check=False)
    assert code != 0 and "retain_sise" in out and "Additional properties" in out

    cfg = small_config()
    cfg["data"]["source"] = "laoin"
    code, out = workflow.run("-n", cfg=cfg, check=False)
    assert code != 0 and "'laoin' is not one of ['synthetic', 'laion']" in out
    assert "source" in out


def test_check_config_names_the_file_and_line_snakemake_does_not(tmp_path, capfd):
    from unlearnflow.cli import main

    bad = tmp_path / "my.yaml"
    bad.write_text('data:\n  shards: ["00000"\n  source: laion\n')
    assert main(["check-config", str(bad)]) == 1
    assert f"{bad}: not valid YAML at line 3, column 3" in capfd.readouterr().err
    bad.write_text("data:\n  sourse: laion\nselection: {retain_size: 0}\n")
    assert main(["check-config", str(bad)]) == 1
    err = capfd.readouterr().err
    assert "config data: Additional properties are not allowed ('sourse' was unexpected)" in err
    assert "config selection.retain_size: 0 is less than the minimum of 1" in err
    bad.write_text("branches: [clip]\n")
    assert main(["check-config", str(bad)]) == 0
    # beyond the schema: what the DAG build checks (the method table, the plan)
    bad.write_text("run_methods: [slug, foo]\n")
    assert main(["check-config", str(bad)]) == 1
    assert f"{bad}: config run_methods: unknown clip methods ['foo']; known clip methods: ['slug'," in capfd.readouterr().err


def test_unknown_target_names_the_known_ones(workflow):
    cfg = small_config(targets=[{"id": "x", "name": "Zed Nobody", "kind": "identity"}])
    code, out = workflow.run("-n", cfg=cfg, check=False)
    assert code != 0 and "Zed Nobody" in out and "Mira Castell" in out

    code, out = workflow.run("-n", "results/data/nobody/forget.tar", cfg=small_config(), check=False)
    assert code != 0 and "unknown target 'nobody'" in out and "mira_castell" in out


def test_one_id_with_two_definitions_is_an_error_naming_both(workflow):
    """An id in targets and t2i.targets is one forget set: if the entries
    differ, one would silently replace the other (another concept's set)."""
    from unlearnflow.io import UnlearnflowError
    from unlearnflow.targets import merge_targets

    mira = {"id": "mira_castell", "name": "Mira Castell", "kind": "identity"}
    other = {"id": "mira_castell", "name": "Vellum", "kind": "style"}
    # the same entry in both lists is one target
    assert merge_targets({"targets": [mira], "t2i": {"targets": [dict(mira)]}}) == {"mira_castell": mira}
    with pytest.raises(UnlearnflowError, match=r"targets\[0\] and t2i.targets\[1\].*name: 'Mira Castell' vs 'Vellum'"):
        merge_targets({"targets": [mira], "t2i": {"targets": [{"id": "v", "name": "Vellum"}, other]}})
    with pytest.raises(UnlearnflowError, match=r"t2i.targets\[1\]: duplicate target id 'mira_castell' \(also t2i.targets\[0\]\)"):
        merge_targets({"branches": ["t2i"], "targets": [], "t2i": {"targets": [mira, other]}})

    cfg = small_config()
    cfg["t2i"] = {"targets": [{"id": "mira_castell", "name": "Mira Castell", "kind": "identity", "aliases": ["M. C."]}]}
    code, out = workflow.run("-n", cfg=cfg, check=False)
    assert code != 0 and "'mira_castell' is defined twice, differently, in targets[0] and t2i.targets[0]" in out
    assert "aliases" in out


def test_empty_forget_set_fails_clearly_and_keeps_the_shards(workflow):
    cfg = small_config()
    cfg["data"]["synthetic"]["mix"] = {"identity": 0, "object": 1, "style": 1, "pair": 0, "none": 1}
    cfg["targets"] = [{"id": "mira_castell", "name": "Mira Castell", "kind": "identity"}]
    code, out = workflow.run(cfg=cfg, check=False)
    assert code != 0
    assert "empty forget set" in out and "mira_castell" in out
    res = workflow.workdir / "results/data"
    assert not (res / "mira_castell/forget.tar").exists()
    assert not (res / "mira_castell/retain.tar").exists()
    # what was already computed is kept
    assert (res / "laion/00000.tar").exists() and (res / "laion/00001.tar").exists()


def test_eval_set_from_user_folders(workflow, tmp_path):
    root = tmp_path / "faces"
    for person, color in (("Ada_Lovelace", (200, 30, 30)), ("Alan Turing", (30, 30, 200))):
        (root / person).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (48, 40), (color[0], color[1] + 10 * i, color[2])).save(root / person / f"{i}.jpg")
    cfg = small_config()
    cfg["data"]["eval"]["identities"] = {
        "source": "folders",
        "layout": "identity_folders",
        "root": str(root),
        "image_size": 32,
    }
    workflow.run("results/data/eval/identities/test.tar", cfg=cfg)
    classes = json.loads((workflow.workdir / "results/data/eval/identities/classes.json").read_text())
    assert classes["classes"] == ["Ada_Lovelace", "Alan Turing"]
    assert sum(classes["counts"].values()) == 8 and classes["source"]["listing"]
    # the tree's listing is a rerun trigger: an image added reruns the ingestion
    _, out = workflow.run("-n", "results/data/eval/identities/test.tar", cfg=cfg)
    assert "Nothing to be done" in out
    Image.new("RGB", (48, 40), (9, 9, 9)).save(root / "Ada_Lovelace" / "new.jpg")
    _, out = workflow.run("results/data/eval/identities/test.tar", cfg=cfg)
    assert "rule ingest_eval_set" in out
    classes = json.loads((workflow.workdir / "results/data/eval/identities/classes.json").read_text())
    assert sum(classes["counts"].values()) == 9
    # a tree of another kind under `identities` is refused, naming the key
    cfg["data"]["eval"]["identities"]["layout"] = "imagenet"
    code, out = workflow.run("results/data/eval/identities/test.tar", cfg=cfg, check=False)
    assert code != 0 and "data.eval.identities" in out and "is a tree of objects, not of identities" in out
    # a folders set without its root is a schema error naming the key
    del cfg["data"]["eval"]["identities"]["root"]
    code, out = workflow.run("-n", cfg=cfg, check=False)
    assert code != 0 and "root" in out


ALL_METHODS = ["slug", "ft", "ga", "ga_ft", "salun", "ssd"]


def test_clip_dag_end_to_end_all_methods(repo_workflow):
    """The whole CLIP branch on a tiny config: model, gradients, layers, masks,
    every method, evaluation, table, trade-off plot, provenance; then a
    change of one method's params reruns only that method, an evaluation-only
    key reruns no unlearning, and an edit of a method's source (on a copy of
    the repo) reruns that method's jobs and nothing upstream."""
    workflow = repo_workflow
    import pandas as pd
    from safetensors.torch import load_file

    tiny_ft = {"epochs": 1, "max_steps": 3, "batch_size": 16}
    cfg = small_config(
        targets=[{"id": "mira_castell", "name": "Mira Castell", "kind": "identity"}],
        clip={"train": {"epochs": 2, "batch_size": 64}},
        run_methods=ALL_METHODS,
        methods={
            "slug": {"max_layers_per_tower": 1, "max_probes": 3},
            "ft": dict(tiny_ft),  # copies: one method's change must not touch another
            "ga": dict(tiny_ft),
            "ga_ft": dict(tiny_ft),
            "salun": tiny_ft | {"mask_fraction": 0.5},
            "ssd": {"lambdas": [0.5, 1.0]},
        },
        masks={"fractions": [0.5, 1.0]},
        evaluation={"mia_seeds": 2},
    )
    cfg["data"]["heldout_shards"] = ["00005"]
    workflow.run(cfg=cfg)
    res = workflow.workdir / "results"
    table = pd.read_csv(res / "tables/clip_unlearning.csv")
    assert list(table.columns) == [
        "target", "method", "fa1", "fa5", "identity_acc1", "test_acc1", "mia", "seconds", "peak_mem_mb", "search", "provenance",
    ]  # fmt: skip
    # the searching methods' own verdicts, read from their info.json; blank
    # for the methods that search nothing and for the mean rows
    mira = table[table["target"] == "mira_castell"].set_index("method")
    for m in ("slug", "ssd"):
        info = json.loads((res / f"unlearn/tiny_clip/mira_castell/{m}/info.json").read_text())
        assert mira.loc[m, "search"] == info["status"], m
    assert mira.drop(index=["slug", "ssd"])["search"].isna().all()
    assert table.loc[table["target"] == "mean", "search"].isna().all()
    # every row, mean rows included, resolves to what produced it
    index = json.loads((res / "provenance.json").read_text())
    for _, row in table.iterrows():
        record = index[row["provenance"]]
        if row["target"] == "mean":
            assert record["aggregate"] == "mean over targets" and all(i in index for i in record["of"])
            continue
        assert record["rule"] == "evaluate_clip" and len(record["code"]) == 16 and len(record["params_hash"]) == 16
        assert record["seeds"]["mia"] == [0, 1] and record["model"]["fingerprint"]
        if row["method"] != "original":
            up = record["unlearn"]
            assert up["rule"] == "unlearn_clip" and up["method"] == row["method"] and up["seed"] == 0
            assert record["seeds"]["unlearn"] == 0 and len(record["model"]["delta_sha256"]) == 64
    methods = ["original"] + ALL_METHODS
    assert set(zip(table["target"], table["method"])) == {(t, m) for t in ("mira_castell", "mean") for m in methods}
    for m in ALL_METHODS:
        row = table[(table["target"] == "mira_castell") & (table["method"] == m)].iloc[0]
        assert row["seconds"] > 0 and row["peak_mem_mb"] > 0, m
    # SalUn's mask means something (masks.rank_among: nonzero): not GA+FT's row
    metrics = ["fa1", "fa5", "identity_acc1", "test_acc1", "mia"]
    rows = table[table["target"] == "mira_castell"].set_index("method")[metrics]
    assert (rows.loc["salun"] - rows.loc["ga_ft"]).abs().max() > 0, rows
    assert (res / "tables/clip_unlearning.md").read_text().count("|") > 20
    assert "\\begin{tabular}" in (res / "tables/clip_unlearning.tex").read_text()
    assert (res / "tables/clip_tradeoff.png").stat().st_size > 5000
    assert len(load_file(res / "unlearn/tiny_clip/mira_castell/slug/delta.safetensors")) == 1
    assert (res / "masks/tiny_clip/mira_castell/salun_0.5.safetensors").exists()
    base = json.loads((res / "eval/tiny_clip/mira_castell/base.json").read_text())
    assert base["delta"] == "" and 0 <= base["fa1"] <= 100
    assert (res / "layers/tiny_clip/mira_castell.png").stat().st_size > 1000
    # every torch job runs on the rule's threads (config `threads`, default 1),
    # so two jobs share the 2 cores instead of queueing
    for log in ("unlearn_clip/tiny_clip/mira_castell/slug", "clip_gradients/tiny_clip/mira_castell/retain"):
        assert "torch threads 1" in (workflow.workdir / f"logs/{log}.log").read_text(), log
    # and the thread count is no result: changing it reruns nothing
    _, out = workflow.run("-n", cfg=cfg | {"threads": 2})
    assert "Nothing to be done" in out

    # one method's new params rerun that method alone (and the table)
    untouched = {m: (res / f"unlearn/tiny_clip/mira_castell/{m}/delta.safetensors").stat().st_mtime_ns for m in ALL_METHODS}
    cfg["methods"]["ft"]["lr"] = 3e-5
    _, out = workflow.run("-n", cfg=cfg)
    assert job_counts(out) == {
        "unlearn_clip": 1, "evaluate_clip": 1, "clip_table": 1, "clip_tradeoff": 1,
        "costs_table": 1, "table_html": 2, "provenance_index": 1, "all": 1,
    }  # fmt: skip
    assert "results/unlearn/tiny_clip/mira_castell/ft/delta.safetensors" in out
    workflow.run(cfg=cfg)
    for m in ALL_METHODS:
        now = (res / f"unlearn/tiny_clip/mira_castell/{m}/delta.safetensors").stat().st_mtime_ns
        assert (now != untouched[m]) == (m == "ft"), m

    # an evaluation-only key reruns the evaluations, no unlearning
    _, out = workflow.run("-n", cfg=cfg | {"evaluation": {"mia_seeds": 3}})
    counts = job_counts(out)
    assert counts["evaluate_clip"] == 7 and not {"unlearn_clip", "clip_gradients", "salun_masks"} & set(counts), counts

    # code-aware reruns: an edit of methods/slug.py reruns SLUG's jobs and
    # what reads them; nothing upstream, no other method
    def edited(rel: str) -> dict:
        path = workflow.repo / "src/unlearnflow" / rel
        text = path.read_text()
        path.write_text(text + "\n# an edit\n")
        try:
            _, out = workflow.run("-n", cfg=cfg)
        finally:
            path.write_text(text)
        return job_counts(out)

    after_slug = {
        "unlearn_clip": 1, "evaluate_clip": 1, "slug_search_plot": 1, "clip_table": 1, "clip_tradeoff": 1,
        "costs_table": 1, "table_html": 2, "provenance_index": 1, "all": 1,
    }  # fmt: skip
    assert edited("methods/slug.py") == after_slug
    _, out = workflow.run("-n", cfg=cfg)
    assert "Nothing to be done" in out  # reverted: a no-op again
    counts = edited("data/select.py")
    assert counts["select_sets"] == 1 and counts["unlearn_clip"] == 6 and counts["clip_gradients"] == 2, counts
    assert not {"synthetic_shard", "synthetic_eval_set", "pretrain_clip"} & set(counts), counts
    _, out = workflow.run("-n", cfg=cfg)
    assert "Nothing to be done" in out


def test_clip_branch_unlearns_a_style_target(workflow):
    """A style as a CLIP target: forget set by the style's name, forget
    accuracy over the style names on the styles set, style_acc1 in the
    records and the table, and SLUG's auto stop rule falling back to FA@1
    (recorded in its info)."""
    import pandas as pd

    cfg = small_config(
        targets=[{"id": "inkwash", "name": "Inkwash", "kind": "style"}],
        clip={"train": {"epochs": 2, "batch_size": 64}},
        run_methods=["slug", "ssd"],
        methods={"slug": {"max_layers_per_tower": 1, "max_probes": 3}, "ssd": {"lambdas": [0.5, 1.0]}},
        evaluation={"mia_seeds": 1},
    )
    cfg["branches"] = ["clip"]
    cfg["data"]["heldout_shards"] = ["00005"]
    workflow.run(cfg=cfg)
    res = workflow.workdir / "results"
    table = pd.read_csv(res / "tables/clip_unlearning.csv")
    assert list(table.columns[:7]) == ["target", "method", "fa1", "fa5", "identity_acc1", "test_acc1", "style_acc1"]
    rows = table[table["target"] == "inkwash"].set_index("method")
    assert set(rows.index) == {"original", "slug", "ssd"}
    assert rows["style_acc1"].between(0, 100).all() and rows.loc["original", "fa1"] >= 0
    summary = json.loads((res / "data/inkwash/summary.json").read_text())
    assert summary["forget"] > 0 and all("inkwash" in c.lower() for c in summary["forget_examples"])
    info = json.loads((res / "unlearn/tiny_clip/inkwash/slug/info.json").read_text())
    # auto: FA@5 first; among 3 style names the top 5 always hold the target,
    # so no layer meets it and the search stops on FA@1
    assert info["params"]["forget_metric_asked"] == "auto" and info["params"]["forget_metric"] == "fa1"
    assert "no layer met fa5 within budget" in info["why"]
    base = json.loads((res / "eval/tiny_clip/inkwash/base.json").read_text())
    assert base["n_forget_images"] == 5 and base["style_acc1"] >= 0  # 5 objects x 1 test picture in Inkwash


T2I_RULES = {"pretrain_t2i", "export_t2i", "t2i_salun_masks", "unlearn_t2i", "generate_t2i", "evaluate_t2i", "t2i_table"}
I2I_RULES = {"i2i_images", "i2i_sets", "train_i2i", "import_i2i", "unlearn_i2i", "evaluate_i2i", "i2i_table", "i2i_tsne"}
CLIP_RULES = {"clip_gradients", "layer_analysis", "unlearn_clip", "evaluate_clip", "clip_table", "clip_tradeoff"}


def test_branches_switch_whole_branches_and_the_readme_example_runs_only_clip(workflow):
    """A branch left out of `branches` adds no job; the README's real-data
    example runs exactly the CLIP branch it shows."""
    from conftest import REPO

    cfg = small_config()
    cfg["t2i"] = {"targets": [{"id": "vellum", "name": "Vellum", "kind": "style"}]}
    cfg["i2i"] = {"run_methods": ["li"], "forget_classes": ["ball", "crate"], "retain_classes": ["pyramid", "star"]}
    _, out = workflow.run("-n", cfg=cfg)
    every = set(job_counts(out))
    assert CLIP_RULES <= every and T2I_RULES - {"export_t2i"} <= every and I2I_RULES - {"import_i2i"} <= every

    cases = [
        (["clip"], T2I_RULES | I2I_RULES),
        (["t2i"], {"unlearn_clip", "evaluate_clip", "clip_table"} | I2I_RULES),  # t2i SLUG reads CLIP gradients
        (["i2i"], CLIP_RULES | T2I_RULES | {"select_sets", "synthetic_eval_set"}),
    ]
    for branches, absent in cases:
        _, out = workflow.run("-n", cfg=cfg | {"branches": branches})
        counts = job_counts(out)
        assert not absent & set(counts), (branches, counts)
    # a t2i target left out with its branch is not read, not even checked
    bad = cfg | {"branches": ["clip"], "t2i": {"targets": [{"id": "mira_castell", "name": "Vellum", "kind": "style"}]}}
    workflow.run("-n", cfg=bad)
    code, out = workflow.run("-n", cfg=cfg | {"targets": []}, check=False)
    assert code != 0 and "config targets: empty, but branches has clip" in out

    readme = (REPO / "README.md").read_text()
    for heading, shards in (("## Real data", 2), ("## Your own data", 1)):
        section = readme.split(heading, 1)[1]
        example = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))
        _, out = workflow.run("-n", cfg=example)
        counts = job_counts(out)
        assert CLIP_RULES <= set(counts) and not (T2I_RULES | I2I_RULES) & set(counts), (heading, counts)
        assert counts["laion_images"] == shards and counts["select_sets"] == 1 and "synthetic_shard" not in counts


def test_no_mia_non_member_source_is_a_config_error(workflow):
    cfg = small_config()
    cfg["data"]["heldout_shards"] = []
    code, out = workflow.run("-n", cfg=cfg, check=False)
    assert code != 0 and "data.heldout_shards" in out and "data.heldout_fraction" in out
    cfg["data"]["heldout_fraction"] = 0.2
    _, out = workflow.run("-n", cfg=cfg)
    assert job_counts(out)["synthetic_shard"] == 2  # training shards only


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_pass_check_config(path, capfd):
    """Every config the README and docs tell a user to layer over
    config.yaml passes the schema and the plan (method names, params)."""
    from unlearnflow.cli import main

    assert main(["check-config", str(path)]) == 0, capfd.readouterr()
