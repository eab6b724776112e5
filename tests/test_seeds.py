"""Unlearning seeds: runs per seed, per-seed CSV rows, mean ± std views."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from conftest import small_config
from unlearnflow import seeds
from unlearnflow.tables import seed_summary


def test_runs_keep_the_first_seeds_name():
    assert seeds.seed_list(3) == [3] and seeds.seed_list([0, 1, 2]) == [0, 1, 2]
    assert seeds.runs("ga_ft", [5, 6, 7]) == ["ga_ft", "ga_ft.s6", "ga_ft.s7"]
    assert [seeds.method_of(r) for r in ("ga_ft", "ga_ft.s6", "ssd")] == ["ga_ft", "ga_ft", "ssd"]
    assert [seeds.seed_of(r, [5, 6]) for r in ("ga_ft", "ga_ft.s6")] == [5, 6]
    for bad in ([], [1, 1]):
        with pytest.raises(ValueError, match="seeds.unlearn"):
            seeds.seed_list(bad)
    assert re.fullmatch(seeds.RUN_PATTERN, "ga_ft.s12") and not re.fullmatch(seeds.RUN_PATTERN, "ga.relearn")


def test_the_summary_is_mean_and_sample_std_over_the_seed_rows():
    df = pd.DataFrame(
        {
            "target": ["a", "a", "a", "a"],
            "method": ["original", "ga", "ga", "ga"],
            "seed": [None, 0, 1, 2],
            "fa1": [90.0, 10.0, 20.0, 60.0],
            "provenance": ["p0", "p1", "p2", "p3"],
        }
    )
    view = seed_summary(df)
    assert view["n"].tolist() == [1, 3]
    assert view["fa1"].tolist() == ["90.00", "30.00 ± 26.46"]  # std of 10, 20, 60 with ddof 1
    assert view["provenance"][0] == "p0"
    record = view.attrs["provenance"][view["provenance"][1]]
    assert record == {"aggregate": "mean ± std over seeds", "of": ["p1", "p2", "p3"]}


def parse(cell: str) -> tuple[float, float]:
    mean, std = cell.split(" ± ")
    return float(mean), float(std)


def test_three_seeds_in_the_dag(workflow):
    from test_workflow import job_counts

    cfg = small_config(run_methods=["ga"])
    cfg["targets"] = cfg["targets"][:1]
    cfg["methods"] = {"ga": {"epochs": 2, "lr": 2e-4}}
    cfg["attacks"] = {"in_all": False}
    workflow.run("results/tables/clip_unlearning.csv", cfg=cfg)
    res = workflow.workdir / "results"
    one = pd.read_csv(res / "tables/clip_unlearning.csv")
    assert "seed" not in one.columns  # one seed: the table as it always was

    cfg3 = cfg | {"seeds": {"unlearn": [0, 1, 2]}}
    _, out = workflow.run("results/tables/clip_unlearning.csv", "-n", cfg=cfg3)
    # the first seed's run keeps its name and its results: only the new seeds run
    assert job_counts(out) == {"unlearn_clip": 2, "evaluate_clip": 2, "clip_table": 1}
    workflow.run("results/tables/clip_unlearning.csv", cfg=cfg3)
    assert (res / "unlearn/tiny_clip/mira_castell/ga.s2/delta.safetensors").exists()
    info = json.loads((res / "unlearn/tiny_clip/mira_castell/ga.s1/info.json").read_text())
    assert info["method"] == "ga" and info["provenance"]["seed"] == 1
    csv = pd.read_csv(res / "tables/clip_unlearning.csv")
    rows = csv[(csv.target == "mira_castell") & (csv.method == "ga")]
    assert rows["seed"].tolist() == [0, 1, 2]
    assert rows.iloc[0].drop(["seconds", "seed"]).equals(one[(one.target == "mira_castell") & (one.method == "ga")].iloc[0].drop("seconds"))
    md = (res / "tables/clip_unlearning.md").read_text()
    assert "Mean ± std (sample) over the unlearning seeds [0, 1, 2]" in md
    line = next(line for line in md.splitlines() if "| mira_castell | ga " in line)
    cells = [c.strip() for c in line.strip("|").split("|")]
    header = [c.strip() for c in next(ln for ln in md.splitlines() if ln.startswith("| target")).strip("|").split("|")]
    got = dict(zip(header, cells))
    assert got["n"] == "3"
    spread = False
    for metric in ("fa1", "identity_acc1", "test_acc1", "mia"):
        mean, std = parse(got[metric])
        assert mean == pytest.approx(rows[metric].mean(), abs=0.006)
        assert std == pytest.approx(rows[metric].std(ddof=1), abs=0.006)
        spread |= std > 0
    assert spread, "the seeds gave three identical runs: the seed does not reach the method"
    provenance = json.loads((res / "tables/clip_unlearning.provenance.json").read_text())
    assert any(r.get("aggregate") == "mean ± std over seeds" for r in provenance.values())
