"""The benchmark suite's own logic (benchmarks/): the table, the scale plan's
counts, the cost model, the GPU benchmark's skip and code path. Nothing here
is timed: the suite measures, these tests only check that it works."""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import benchlib  # noqa: E402
from benchlib import Context, Result  # noqa: E402


def test_verdicts_and_summary_table():
    rows = [
        Result("a", "1 s vs 2 s", "<= 0.2", 0.5, 0.2),
        Result("b", "x", "<= 3", 2.9, 3.0),
        Result("c", "model", "(model)", 1.7, status="MODEL"),
        Result("d", "no GPU", "", status="SKIP"),
        Result("e", "context", ""),
    ]
    assert [r.verdict for r in rows] == ["FAIL", "PASS", "MODEL", "SKIP", "INFO"]
    text = benchlib.table(rows)
    lines = text.splitlines()
    assert lines[0].startswith("| name") and len(lines) == 2 + len(rows)
    assert "| FAIL" in lines[2] and "<= 0.2" in lines[2] and "0.5" in lines[2]
    assert len({len(line) for line in lines}) == 1  # aligned columns


def test_interleaved_pairs_the_calls_of_a_repeat():
    order = []
    t = benchlib.interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 3)
    assert order == ["a", "b"] * 3
    assert len(t["a"]) == len(t.cpu["b"]) == 3
    assert t.ratio("a", "b") > 0 and t.ratio("a", "b", cpu=False) > 0


def test_scale_plan_counts_match_a_real_model():
    import open_clip

    from unlearnflow.gradients import candidate_names
    from unlearnflow.models.clip import tiny_config

    import scale_plan

    real = open_clip.CLIP(**tiny_config())
    params = dict(real.named_parameters())
    p1, p4 = scale_plan.plan(None, 1), scale_plan.plan(None, 4)
    P = sum(p.numel() for p in params.values())
    Pc = sum(params[n].numel() for n in candidate_names(real))
    assert p4["params"] == P and p4["candidate_params"] == Pc and p4["tensors"] == len(params)
    assert p4["files_all"] == 8 * P and p4["files_candidates"] == 8 * Pc
    # activations grow with the batch (linearly, but for batch-size-free terms)
    assert 3.5 * p1["activations"] < p4["activations"] <= 4 * p1["activations"] + 1
    assert p4["device_all"] == 8 * P + p4["activations"]
    assert "| tiny_clip (default) |" in scale_plan.markdown([p4])


def test_cost_model():
    import slug_cost

    m = slug_cost.cost_model(100, 1000, 10, 30, 300)
    assert m["slug"] == 100 + 1000 + 30 * 300 / 3
    assert (m["ga"], m["ga_ft"], m["salun"], m["ft"]) == (1000, 2000, 2100, 10000)
    assert m["k_epochs_over_both"] == 11000
    shared = slug_cost.cost_model(100, 1000, 10, 30, 300, retain_shared_by=float("inf"))
    assert shared["slug"] == 100 + 30 * 300 / 3


def test_gpu_benchmark_skips_without_cuda(monkeypatch):
    import torch

    import gpu_gradients

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (r,) = gpu_gradients.run(Context(quick=True))
    assert r.verdict == "SKIP" and r.measured == "skipped: no CUDA"


def test_gpu_benchmark_code_path_on_the_cpu():
    import gpu_gradients

    (r,) = gpu_gradients.run(Context(quick=True, repeats=2), arch="tiny", device="cpu", batch_size=4, n_batches=2)
    assert r.ratio > 0 and r.limit == 1.10 and "samples/s" in r.measured


def test_run_names_the_known_benchmarks():
    import run

    with pytest.raises(SystemExit) as e:
        run.main(["--only", "nope"])
    assert e.value.code == 2
    assert set(run.BENCHMARKS) >= {"gradient_overhead", "clip_search", "slug_cost", "dag_overhead", "end_to_end", "scale_plan", "gpu_gradients"}


def test_job_overhead_reads_wall_stage_and_import_seconds(tmp_path):
    import job_overhead

    res = tmp_path / "results"
    head = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for job, wall, stage, imports in (("a/x", 10.0, 8.5, 3.0), ("a/y", 4.0, 3.0, 0.5), ("b/t/z", 2.0, 1.0, None)):
        tsv, log = res / "benchmarks" / f"{job}.tsv", tmp_path / "logs" / f"{job}.log"
        tsv.parent.mkdir(parents=True, exist_ok=True)
        log.parent.mkdir(parents=True, exist_ok=True)
        tsv.write_text(head + f"{wall}\t0:00:10\t1\t1\t1\t1\t0\t0\t90\t{wall}\n")
        tail = f" (imports {imports:.2f} s)" if imports is not None else ""  # an older log has no import time
        log.write_text(f"... stage a started\n... INFO unlearnflow: stage a finished in {stage} s{tail}, torch threads 1\n")
    (res / "benchmarks" / "c").mkdir()
    (res / "benchmarks" / "c" / "nolog.tsv").write_text(head)  # no log: not a stage job
    s = job_overhead.summarise(job_overhead.read_jobs(res))
    assert s["jobs"] == 3 and s["median_overhead"] == 1.0  # 1.5, 1.0, 1.0
    assert s["timed_imports"] == 2 and s["median_startup"] == (4.5 + 1.5) / 2
    assert s["by_rule"] == {"a": 1.25, "b": 1.0}
    (r, r2) = job_overhead.results_for(res)
    assert r.ratio == 0.5 and r.verdict == "PASS" and r2.verdict == "INFO"


def test_equal_quality_takes_the_cheapest_run_that_meets_the_bar(monkeypatch, tmp_path):
    """Baselines climb the epoch ladder until they meet FA1 <= 5 within SLUG's
    budget; the headline divides SLUG by the cheapest run that met it, and
    says 'upper bound' when none did."""
    import equal_quality as eq

    base = {"fa1": 100.0, "identity_acc1": 100.0, "test_acc1": 96.0}
    # (method, epochs) -> (CPU seconds, record): GA meets at 5 epochs but wrecks nothing; FT never forgets
    runs = {("slug", None): (5.0, {"fa1": 0.0, "identity_acc1": 99.0, "test_acc1": 95.0}),
            ("ssd", None): (4.0, {"fa1": 0.0, "identity_acc1": 80.0, "test_acc1": 90.0})}
    for k in eq.LADDER:
        runs[("ga", k)] = (2.0 * k, {"fa1": 0.0 if k >= 5 else 50.0, "identity_acc1": 97.0, "test_acc1": 94.0})
        runs[("ga_ft", k)] = (4.0 * k, {"fa1": 0.0 if k >= 2 else 30.0, "identity_acc1": 99.0, "test_acc1": 96.0})
        runs[("salun", k)] = (5.0 * k, {"fa1": 100.0, "identity_acc1": 100.0, "test_acc1": 96.0})
        runs[("ft", k)] = (9.0 * k, {"fa1": 100.0, "identity_acc1": 100.0, "test_acc1": 96.0})

    class Clock:
        def __init__(self, s):
            self.cpu = self.wall = {"total": s}

    class Result:
        def __init__(self, rec):
            self.tensors, self.info, self.rec = {}, {"probes": 10}, rec

    class FakeRunner:
        def __init__(self, ctx):
            self.cfg = {"methods": {"slug": {"utility_budget": {"identity_acc1": 5.0, "test_acc1": 3.0}},
                                    **{m: {"epochs": 5} for m in eq.EPOCH_METHODS}}}
            self.last, self.tmp, self.res = {}, tmp_path / "t", tmp_path
            self.data, self.retain = tmp_path, tmp_path / "retain.tar"
            self.calls = []

        def timed(self, name):
            k = self.cfg["methods"].get(name, {}).get("epochs") if name in eq.EPOCH_METHODS else None
            self.calls.append((name, k))
            s, rec = runs[(name, k)]
            self.last[name] = Result(rec)
            return Clock(s)

    made = []
    monkeypatch.setattr(eq, "Runner", lambda ctx: made.append(FakeRunner(ctx)) or made[-1])
    # the record of a run is its fake result's; the base record before any run
    monkeypatch.setattr(eq, "evaluate", lambda r, tensors, split: (r.last[r.calls[-1][0]].rec if r.calls else base))
    monkeypatch.setattr(eq, "_count", lambda p: 100)
    monkeypatch.setattr(eq, "_eval_sets", lambda res: {"identities": {"tar": "x"}})
    head, finetuning, passes, paper = eq.run(Context(results=tmp_path))
    calls = made[-1].calls
    # GA climbs 1, 2, 5 and stops; GA+FT stops at 2; SalUn and FT climb the whole ladder
    assert [k for m, k in calls if m == "ga"] == [1, 2, 5] and [k for m, k in calls if m == "ga_ft"] == [1, 2]
    assert [k for m, k in calls if m == "ft"] == list(eq.LADDER)
    # the cheapest that met the bar: GA x5 (10 s) against GA+FT x2 (8 s) -> GA+FT; SSD met FA1 but over budget
    assert "ga_ft x2 epochs" in head.measured and head.ratio == 5.0 / 8.0 and "upper bound" not in head.measured
    assert finetuning.ratio == 5.0 / 8.0  # GA+FT is a fine-tuning baseline too
    assert paper.status == "MODEL" and passes.status == "MODEL"
