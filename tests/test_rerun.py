"""Snakemake's params trigger keyed by name (unlearnflow.rerun)."""

from __future__ import annotations

import subprocess

from conftest import BIN, REPO

SNAKEFILE = """
import sys
sys.path.insert(0, {src!r})
if config.get("keyed", True):
    from unlearnflow.rerun import key_params_trigger
    key_params_trigger()

rule analysis:
    output: "out.txt"
    params:
        use_abs=config["use_abs"],
        matrices_only=config["matrices_only"],
        seed=config["seed"],
        size=config["size"],
        offset=config["offset"],
    shell: "echo {{params}} > {{output}}"
"""


def _run(d, *flags, **cfg):
    conf = [f"{k}={v}" for k, v in cfg.items()]
    proc = subprocess.run(
        [str(BIN / "snakemake"), "out.txt", *flags, "--cores", "1",
         "--rerun-triggers", "mtime", "params", "input", "--config", *conf],  # fmt: skip
        cwd=d, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_a_value_moving_between_params_reruns_the_job(tmp_path):
    """Two booleans swapped, or a seed set to a value another param already
    has, leave the set of values Snakemake records unchanged: keyed by name,
    both rerun the job; unkeyed (Snakemake as it is) neither does."""
    (tmp_path / "Snakefile").write_text(SNAKEFILE.format(src=str(REPO / "src")))
    for keyed in (True, False):
        (tmp_path / "out.txt").unlink(missing_ok=True)
        base = dict(keyed=keyed, use_abs=False, matrices_only=True, seed=0, size=100, offset=0)
        _run(tmp_path, **base)
        assert "Nothing to be done" in _run(tmp_path, "-n", **base)
        swapped = _run(tmp_path, "-n", **{**base, "use_abs": True, "matrices_only": False})
        seed_as_size = _run(tmp_path, "-n", **{**base, "seed": 100})
        assert ("rule analysis" in swapped) is keyed, swapped
        assert ("rule analysis" in seed_as_size) is keyed, seed_as_size
        assert "Nothing to be done" in _run(tmp_path, "-n", **base)
