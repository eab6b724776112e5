"""Job start-up: what a job imports, and the log line that times it.

Each check runs in a fresh interpreter (the test process has torch loaded)."""

import json
import subprocess
import sys
import textwrap

from conftest import REPO


def fresh(code: str) -> dict:
    """Run ``code`` in a new interpreter (the checkout's library first on the
    path); it prints one JSON line, returned."""
    out = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(REPO / 'src')!r})\n" + textwrap.dedent(code)],
        capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_clip_job_keeps_out_wandb_and_transformers_and_still_builds_its_model(tmp_path):
    got = fresh("""
        import json, sys
        from unlearnflow.cli import keep_out_accidental_imports
        blocked = keep_out_accidental_imports("evaluate_clip", {}, {})
        import open_clip, timm
        model = open_clip.create_model("ViT-B-32", pretrained=None, device="meta")
        print(json.dumps({"blocked": blocked, "loaded": [m for m in ("wandb", "transformers") if sys.modules.get(m)],
                          "params": sum(p.numel() for p in model.parameters())}))
    """)
    assert got["blocked"] == ["wandb", "transformers"] and got["loaded"] == []
    assert got["params"] > 100e6  # a real ViT-B-32, built without them


def test_jobs_that_need_them_keep_them(tmp_path):
    hf = tmp_path / "open_clip_config.json"
    hf.write_text(json.dumps({"model_cfg": {"text_cfg": {"hf_model_name": "xlm-roberta-base"}}}))
    plain = tmp_path / "plain" / "open_clip_config.json"
    plain.parent.mkdir()
    plain.write_text(json.dumps({"model_cfg": {"text_cfg": {"width": 64}}}))

    def blocked(rule, inp, params):
        return fresh(f"""
            import json
            from unlearnflow.cli import keep_out_accidental_imports
            print(json.dumps(keep_out_accidental_imports({rule!r}, {inp!r}, {params!r})))
        """)

    assert blocked("unlearn_t2i", {}, {}) == ["wandb"]  # the pipeline's text encoder is a transformers CLIP
    assert blocked("laion_images", {}, {}) == ["transformers"]  # img2dataset needs wandb to import
    assert blocked("evaluate_clip", {"config": str(hf)}, {}) == ["wandb"]  # a Hugging Face text tower
    assert blocked("pretrain_clip", {}, {"model_cfg": {"text_cfg": {"hf_model_name": "x"}}}) == ["wandb"]
    assert blocked("evaluate_clip", {"config": str(plain)}, {}) == ["wandb", "transformers"]
    # torchmetrics (SSIM / PSNR / LPIPS) imports transformers with its package
    assert blocked("evaluate_i2i", {"features": [str(plain)]}, {}) == ["wandb"]


def test_stage_log_times_the_imports_of_the_stage(tmp_path):
    got = fresh("""
        import json, logging, sys, time
        from unlearnflow import cli
        with cli.ImportClock() as clock:
            import numpy  # noqa: F401 (a first import: counted)
            time.sleep(0.05)  # not an import: not counted
        first = clock.seconds
        with cli.ImportClock() as again:
            import numpy  # noqa: F401 (cached: next to nothing)
        print(json.dumps({"first": first, "cached": again.seconds}))
    """)
    assert 0.005 < got["first"] < 5 and got["cached"] < 0.005


def test_a_tables_job_imports_no_torch(tmp_path):
    bench = tmp_path / "a.tsv"
    bench.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
                     "1.5\t0:00:01\t100\t200\t50\t60\t0\t0\t90\t1.2\n")  # fmt: skip
    got = fresh(f"""
        import json, sys
        from unlearnflow.cli import run_stage
        run_stage("costs_table", {{"benchmarks": [{str(bench)!r}]}},
                  {{"csv": {str(tmp_path / 'c.csv')!r}, "md": {str(tmp_path / 'c.md')!r}}}, {{}})
        print(json.dumps([m for m in ("torch", "transformers", "open_clip", "diffusers", "sklearn") if m in sys.modules]))
    """)
    assert got == [] and "total,1 jobs,1.50" in (tmp_path / "c.csv").read_text()


def test_stage_modules_import_no_field_library_and_the_import_rules_are_stages():
    """A stage module imports its algorithms inside each stage function, so
    loading it (as the dispatcher does for every job) costs nothing."""
    got = fresh("""
        import importlib, json, sys
        from unlearnflow.registry import RULES
        for name in RULES:
            importlib.import_module(f"unlearnflow.stages.{name}")
        print(json.dumps([m for m in ("torch", "pandas", "numpy", "PIL", "transformers") if m in sys.modules]))
    """)
    assert got == []
    from unlearnflow.cli import TRANSFORMERS_RULES, WANDB_RULES
    from unlearnflow.registry import STAGES

    assert TRANSFORMERS_RULES | WANDB_RULES <= set(STAGES)  # rule names, kept in step with the rules
