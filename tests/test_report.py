"""`snakemake --report`: the tables, the Pareto plot, the search trace, the
trade-off plot and the costs table, each with its caption; and costs.csv."""

import json
import re
import zipfile

import pandas as pd
import pytest

from conftest import small_config
from unlearnflow.tables import benchmark_job, costs_table

TARGET = "mira_castell"

# result file name -> (category, a phrase of its caption, config values the caption renders)
EXPECTED = {
    "clip_unlearning.csv": ("1. Tables", "CLIP unlearning table", ["run_methods (slug, ga)", "mia_seeds = 2 seeds"]),
    "costs.csv": ("1. Tables", "Costs per job", ["run_methods (slug, ga)", "clip.source = train"]),
    "clip_unlearning.html": ("1. Tables", "CLIP unlearning table, as a page", ["results/tables/clip_unlearning.csv"]),
    "costs.html": ("1. Tables", "Costs per job, as a page", ["results/tables/costs.csv"]),
    f"{TARGET}.png": ("2. Layer selection (SLUG)", "Pareto front of layers", [f"for target {TARGET}", "use_abs_alignment = True"]),
    "search.png": ("3. Step-size search (SLUG)", "SLUG step-size search", ["max_layers_per_tower = 1", "max_probes = 3"]),
    "clip_tradeoff.png": ("4. Trade-off", "Forget/keep trade-off", ["run_methods: slug, ga", f"({TARGET})"]),
}


def _text(html: str) -> str:
    """Caption HTML as plain text (tags dropped, spaces collapsed)."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html)).strip()


def _js_var(html: str, name: str):
    """The JSON value of ``var NAME = ...;`` in the report's script tags."""
    m = re.search(rf'<script id="[^"]*">\s*var {name} = (.*?);\s*</script>', html, re.S)
    assert m, f"no `var {name}` in the report"
    return json.loads(m.group(1))


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    """The whole CLIP branch on a tiny config (slug and ga), run once."""
    from conftest import Workflow

    # torch's OpenMP threads spin while they wait: on 2 shared cores that makes
    # training ~10x slower, so let them sleep instead
    mp = pytest.MonkeyPatch()
    mp.setenv("OMP_WAIT_POLICY", "PASSIVE")
    wf = Workflow(tmp_path_factory.mktemp("report"))
    tiny_ft = {"epochs": 1, "max_steps": 3, "batch_size": 16}
    cfg = small_config(
        targets=[{"id": TARGET, "name": "Mira Castell", "kind": "identity"}],
        clip={"train": {"epochs": 1, "batch_size": 64}},
        run_methods=["slug", "ga"],
        methods={"slug": {"max_layers_per_tower": 1, "max_probes": 3}, "ga": tiny_ft},
        masks={"fractions": [0.5, 1.0]},
        evaluation={"mia_seeds": 2},
    )
    cfg["data"]["heldout_shards"] = ["00005"]
    try:
        wf.run(cfg=cfg)
        yield wf
    finally:
        mp.undo()


@pytest.mark.slow
def test_costs_table_has_a_row_per_heavy_job(clip_run):
    res = clip_run.workdir / "results"
    costs = pd.read_csv(res / "tables/costs.csv", keep_default_na=False)
    assert list(costs.columns) == ["rule", "wildcards", "seconds", "peak_mem_mb"]
    jobs, total = costs.iloc[:-1], costs.iloc[-1]
    # every benchmark file the run wrote, but for the cheap local rules
    written = {benchmark_job(p) for p in (res / "benchmarks").rglob("*.tsv")} - {("clip_table", "clip_table")}
    assert set(zip(jobs["rule"], jobs["wildcards"])) == written
    assert len(jobs) == len(written) == 3 + 3 + 1 + 1 + 2 + 1 + 2 + 3  # shards, eval sets, select, model, grads, layers, unlearn, eval
    assert (jobs["seconds"] > 0).all() and (pd.to_numeric(jobs["peak_mem_mb"]) > 0).all()
    assert ("unlearn_clip", f"tiny_clip/{TARGET}/slug") in written
    assert total["rule"] == "total" and total["wildcards"] == f"{len(jobs)} jobs"
    assert total["seconds"] == pytest.approx(jobs["seconds"].sum(), abs=0.05)
    assert float(total["peak_mem_mb"]) == pytest.approx(pd.to_numeric(jobs["peak_mem_mb"]).max())
    assert (res / "tables/costs.md").read_text().count("\n") == len(costs) + 2
    assert (res / f"unlearn/tiny_clip/{TARGET}/slug/search.png").stat().st_size > 10000
    # the HTML view of the table: every row, the total in bold
    page = (res / "tables/costs.html").read_text()
    assert page.count("<tr") == len(costs) + 1 and '<tr class="summary"><td>total</td>' in page
    assert f"<td>tiny_clip/{TARGET}/slug</td>" in page


@pytest.mark.slow
def test_report_zip_and_html_hold_every_result_with_its_caption(clip_run):
    wf = clip_run
    zip_path, html_path = wf.workdir / "report.zip", wf.workdir / "report.html"
    wf.run("--report", str(zip_path))
    wf.run("--report", str(html_path))

    with zipfile.ZipFile(zip_path) as z:
        names = z.namelist()
        html = z.read("report/report.html").decode()
        # the raw results travel in the zip, byte for byte
        for name in EXPECTED:
            (stored,) = [n for n in names if n.startswith("report/data/raw/") and n.endswith("/" + name)]
            source = next(p for p in wf.workdir.joinpath("results").rglob(name) if "benchmarks" not in p.parts)
            assert z.read(stored) == source.read_bytes(), name

    results = _js_var(html, "results")
    by_name = {r["name"]: (path, r) for path, r in results.items()}
    assert set(by_name) == set(EXPECTED), sorted(by_name)
    categories = _js_var(html, "categories")
    for name, (category, phrase, rendered) in EXPECTED.items():
        path, r = by_name[name]
        assert category in categories, (category, list(categories))
        assert path in [p for sub in categories[category].values() for p in sub], (name, category)
        caption = _text(r["caption"])
        assert phrase in caption, (name, caption)
        for value in rendered:  # config values went through the Jinja caption
            assert value in caption, (name, value, caption)
    assert by_name["search.png"][1]["labels"] == {"target": TARGET, "figure": "search trace"}
    assert by_name["clip_unlearning.csv"][1]["mime_type"] == "text/csv"
    assert by_name["costs.csv"][1]["labels"] == {"table": "costs", "format": "CSV (download)"}
    assert by_name["costs.html"][1]["labels"] == {"table": "costs", "format": "HTML (view)"}
    assert by_name["costs.html"][1]["mime_type"] == "text/html"
    workflow_desc = _text(_js_var(html, "workflow_desc"))
    assert "targeted machine unlearning of CLIP" in workflow_desc and TARGET in workflow_desc

    # the single-file report embeds the same results as data URIs
    page = html_path.read_text()
    embedded = _js_var(page, "results")
    assert {r["name"] for r in embedded.values()} == set(EXPECTED)
    assert all(r["data_uri"].startswith("data:") for r in embedded.values())
    assert "Pareto front of layers" in page and "Costs per job" in page


def test_search_trace_plot_handles_a_layer_without_probes(tmp_path):
    """A zero-gradient layer (no probes) gets an empty panel, not an error."""
    from unlearnflow.plots import search_trace_plot

    trace = pd.DataFrame(
        {
            "layer": ["a.weight"] * 3,
            "probe": [0, 1, 2],
            "lam": [1.0, 2.0, 1.5],
            "fa1": [80.0, 0.0, 10.0],
            "identity_acc1": [90.0, 80.0, 85.0],
            "test_acc1": [95.0, 90.0, 92.0],
        }
    )
    info = {
        "method": "slug",
        "layer": "a.weight",
        "lambda": 2.0,
        "layers_searched": ["a.weight", "b.weight"],
        "outcomes": [{"layer": "a.weight", "status": "forgets over budget"}, {"layer": "b.weight", "status": "zero gradient"}],
        "params": {"forget_target": 0.0, "utility_budget": {"identity_acc1": 5.0}},
        "base_val_metrics": {"identity_acc1": 90.0},
        "target": {"id": "t"},
    }
    out = tmp_path / "search.png"
    search_trace_plot(trace, info, out)
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["search.png"]


def test_costs_table_parses_rule_and_wildcards(tmp_path):
    b = tmp_path / "results/benchmarks"
    rows = {
        "unlearn_clip/tiny_clip/mira/slug.tsv": ("unlearn_clip", "tiny_clip/mira/slug"),
        "synthetic_shard/00000.tsv": ("synthetic_shard", "00000"),
    }
    for rel in rows:
        p = b / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("s\th:m:s\tmax_rss\tmax_vms\n2.50\t0:00:02\t100.5\t200\n")
    df = costs_table([b / r for r in rows])
    assert list(zip(df["rule"], df["wildcards"])) == list(rows.values()) + [("total", "2 jobs")]
    assert df["seconds"].tolist() == [2.5, 2.5, 5.0] and df["peak_mem_mb"].iloc[-1] == 100.5
    from unlearnflow.io import InputFileError

    with pytest.raises(InputFileError, match="missing.tsv"):
        costs_table([b / "x/missing.tsv"])
    assert benchmark_job("results/benchmarks/a/b.tsv") == ("a", "b")
