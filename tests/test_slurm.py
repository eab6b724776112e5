"""Cluster submission: the data stages and one GPU-family rule through a real
single-node Slurm on localhost (scripts/local-slurm.sh), with profiles/slurm.

The fixture installs munge/slurmctld/slurmd/slurm-client from Debian if needed
(root only). When they cannot be installed (no root, no apt, no network) the
module is skipped with the reason; once they are installed, the tests run.
Every snakemake call runs under a timeout, so a hang fails instead of blocking.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import BIN, REPO, small_config

pytestmark = pytest.mark.slow

SCRIPT = REPO / "scripts/local-slurm.sh"
PACKAGES = ("munge", "slurmctld", "slurmd", "slurm-client")
RUN_TIMEOUT = 300  # seconds per snakemake run
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.")


def _sh(*cmd, timeout=30) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)


def slurm_up() -> bool:
    if not shutil.which("scontrol"):
        return False
    try:
        return "is UP" in _sh("scontrol", "ping", timeout=15).stdout
    except subprocess.TimeoutExpired:
        return False


def packages_installed() -> bool:
    if not shutil.which("dpkg"):
        return False
    return all(_sh("dpkg", "-s", p).returncode == 0 for p in PACKAGES)


def node_cpus() -> int:
    out = _sh("sinfo", "-h", "-o", "%c").stdout.split()
    return int(out[0].rstrip("+")) if out else 1


@pytest.fixture(scope="module")
def slurm():
    """A running local Slurm; stopped again at the end if this module started it."""
    was_up = slurm_up()
    if not was_up:
        if os.geteuid() != 0:
            pytest.skip("local Slurm: not running, and starting one needs root (apt-get, munged, slurmd)")
        if not (shutil.which("apt-get") or packages_installed()):
            pytest.skip("local Slurm: no apt-get to install munge/slurmctld/slurmd/slurm-client")
        t0 = time.monotonic()
        try:
            proc = _sh("bash", SCRIPT, "start", timeout=900)
            out, code = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:
            out, code = f"{e.stdout or ''}{e.stderr or ''}\n(timed out after {e.timeout} s)", -1
        print(f"\n[test_slurm] scripts/local-slurm.sh start: rc={code} in {time.monotonic() - t0:.0f} s")
        if code != 0:
            tail = out[-3000:]
            if not packages_installed():
                pytest.skip(f"local Slurm: the Debian packages could not be installed:\n{tail}")
            _sh("bash", SCRIPT, "stop", timeout=60)
            pytest.fail(f"local Slurm is installed but did not start:\n{tail}")
    yield {"cpus": node_cpus()}
    if not was_up:
        proc = _sh("bash", SCRIPT, "stop", timeout=120)
        print(f"\n[test_slurm] scripts/local-slurm.sh stop: rc={proc.returncode}")


def write_test_profile(tmp_path: Path, cpus: int) -> Path:
    """profiles/slurm/config.yaml, adapted to a one-node test cluster without
    GPUs: every gpu request becomes 0 (and no gpu_model), threads and memory
    fit the node, status checks start after 2 s. (No account is given: the
    plugin tries to guess one with sacct, fails quickly, and goes on without.)"""
    prof = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    assert prof["executor"] == "slurm" and prof["slurm-status-command"] == "squeue"
    gpu_rules = {rule for rule, res in prof["set-resources"].items() if res.get("gpu")}
    assert {"pretrain_clip", "clip_gradients", "unlearn_clip", "evaluate_clip"} <= gpu_rules
    prof = copy.deepcopy(prof)
    for res in [prof["default-resources"], *prof["set-resources"].values()]:
        if "gpu" in res:
            res["gpu"] = 0
        res.pop("gpu_model", None)
        if "mem_mb" in res:
            res["mem_mb"] = min(int(res["mem_mb"]), 1000)
    prof["max-threads"] = cpus
    prof["set-threads"] = {rule: min(int(n), cpus) for rule, n in prof.get("set-threads", {}).items()}
    prof.update(
        {
            "jobs": 4,
            "latency-wait": 5,
            "slurm-init-seconds-before-status-checks": 2,
            "slurm-keep-successful-logs": True,
        }
    )
    d = tmp_path / "profile-slurm-test"
    d.mkdir()
    (d / "config.yaml").write_text(yaml.safe_dump(prof, sort_keys=False))
    return d


def run_on_slurm(workdir: Path, cfg: dict, *targets: str) -> tuple[int, str]:
    """snakemake --profile <test profile> in workdir, killed after RUN_TIMEOUT s.
    `--workflow-profile none`: the repo's profiles/default (cores: all) would
    otherwise be layered over the cluster profile."""
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    profile = write_test_profile(workdir.parent, node_cpus())
    cmd = [
        str(BIN / "snakemake"),
        *targets,  # first: --configfile would swallow what follows it
        "--profile", str(profile),
        "--workflow-profile", "none",
        "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(workdir),
        "--configfile", str(workdir / "config.yaml"),
    ]  # fmt: skip
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}", NO_ALBUMENTATIONS_UPDATE="1")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        for run_id in set(re.findall(r"SLURM run ID: (\S+)", out)):
            _sh("scancel", "--name", run_id)
        pytest.fail(f"snakemake on Slurm did not finish in {RUN_TIMEOUT} s:\n{out[-6000:]}")
    return proc.returncode, out


def submissions(out: str) -> dict[str, list[tuple[str, Path]]]:
    """{rule: [(slurm job id, slurm log)]} from the plugin's submission lines."""
    subs: dict[str, list[tuple[str, Path]]] = {}
    for _, slurm_id, log in SUBMITTED.findall(out):
        rule = next(p for p in Path(log).parts if p.startswith("rule_"))[len("rule_") :]
        subs.setdefault(rule, []).append((slurm_id, Path(log)))
    return subs


def slurm_job(slurm_id: str) -> dict[str, str]:
    """scontrol's record of a job (kept MinJobAge = 300 s after it ends)."""
    out = _sh("scontrol", "-o", "show", "job", slurm_id).stdout
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


def test_data_stages_and_a_gpu_rule_run_through_slurm(slurm, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    cfg = small_config(
        targets=[{"id": "mira_castell", "name": "Mira Castell", "kind": "identity"}],
        clip={"train": {"epochs": 1, "batch_size": 64}},
    )
    cfg["data"]["shards"] = ["00000"]  # plus the held-out 00002
    t0 = time.monotonic()
    code, out = run_on_slurm(
        workdir, cfg, "results/data/mira_castell/summary.json", "results/models/tiny_clip/model.json"
    )
    print(f"\n[test_slurm] pipeline on Slurm: rc={code} in {time.monotonic() - t0:.0f} s")
    assert code == 0, out[-6000:]

    # the outputs are there
    res = workdir / "results"
    for f in ("data/mira_castell/summary.json", "data/mira_castell/forget.tar", "models/tiny_clip/model.json"):
        assert (res / f).stat().st_size > 0, f
    for shard in ("00000", "00002"):
        assert (res / f"data/laion/{shard}.tar").exists()

    # every job was an sbatch submission (none ran on this host)
    assert "SLURM run ID:" in out
    subs = submissions(out)
    assert {rule: len(jobs) for rule, jobs in subs.items()} == {
        "synthetic_shard": 2,
        "select_sets": 1,
        "pretrain_clip": 1,
    }, out[-6000:]
    assert not re.search(r"^localrule ", out, re.M), "a rule ran locally instead of on Slurm"

    for rule, jobs in subs.items():
        for slurm_id, log in jobs:
            # Slurm ran it, to completion, and it ran the Snakemake job step
            job = slurm_job(slurm_id)
            assert job.get("JobState") == "COMPLETED" and job.get("ExitCode") == "0:0", (rule, job)
            assert (workdir / log).is_file() and f"rule {rule}:" in (workdir / log).read_text(), (rule, log)
            # the GPU override reached sbatch: no --gpus, no GPU in the TRES
            assert "gpu" not in (job.get("TRES", "") + job.get("TresPerJob", "")).lower(), (rule, job)

    # resources from the rules/profile reached sbatch
    shard = slurm_job(subs["synthetic_shard"][0][0])
    assert shard["TimeLimit"] == "00:30:00" and shard["NumCPUs"] == "1", shard
    train = slurm_job(subs["pretrain_clip"][0][0])
    assert train["TimeLimit"] == "12:00:00", train  # profile: pretrain_clip runtime 720
    assert int(train["NumCPUs"]) == slurm["cpus"], train  # threads -> --cpus-per-task
    assert "mem=1000M" in train["TRES"], train


def test_a_job_failing_on_slurm_fails_the_run(slurm, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    cfg = small_config(targets=[{"id": "mira_castell", "name": "Mira Castell", "kind": "identity"}])
    cfg["data"]["shards"] = ["00000"]
    cfg["data"]["synthetic"]["mix"] = {"identity": 0, "object": 1, "style": 1, "pair": 0, "none": 1}
    t0 = time.monotonic()
    code, out = run_on_slurm(workdir, cfg, "results/data/mira_castell/summary.json")
    print(f"\n[test_slurm] failing run on Slurm: rc={code} in {time.monotonic() - t0:.0f} s")
    assert code != 0
    # the main log names the failed Slurm job and shows the job's own error
    # (show-failed-logs)
    ((failed_id, log),) = submissions(out)["select_sets"]
    assert "Error in rule select_sets" in out and f"SLURM-job '{failed_id}' failed" in out, out[-6000:]
    assert "empty forget set" in out and "mira_castell" in out, out[-6000:]
    job = slurm_job(failed_id)
    assert job.get("JobState") == "FAILED" and job.get("ExitCode") != "0:0", job
    assert "empty forget set" in (workdir / log).read_text()  # a failed job's Slurm log is kept
    # nothing half-written; the shards made on Slurm before the failure are kept
    res = workdir / "results/data"
    assert not (res / "mira_castell/forget.tar").exists()
    assert all((res / f"laion/{s}.tar").exists() for s in ("00000", "00002"))
