"""Shared fixtures: small synthetic specs and a Snakemake runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

IDENTITIES = ["Mira Castell", "Bram Okafor", "Ines Duval", "Tomas Reyk", "Lena Holt", "Oskar Brandt"]
OBJECTS = ["ball", "crate", "pyramid", "star", "kite"]
STYLES = ["Vellum", "Neonwave", "Inkwash"]


def small_synthetic(**over) -> dict:
    p = {
        "seed": 0,
        "image_size": 32,
        "samples_per_shard": 400,
        "identities": IDENTITIES,
        "objects": OBJECTS,
        "styles": STYLES,
        "mix": {"identity": 0.4, "object": 0.2, "style": 0.25, "pair": 0.08, "none": 0.07},
        "failure_rate": 0.02,
    }
    p.update(over)
    return p


@pytest.fixture
def spec_params():
    return small_synthetic()


@pytest.fixture(scope="session")
def small_shards(tmp_path_factory):
    """Two small synthetic shards on disk, made once per session."""
    from unlearnflow.data.synthetic import SyntheticSpec, write_shard

    d = tmp_path_factory.mktemp("shards")
    spec = SyntheticSpec.from_params(small_synthetic())
    paths = []
    for shard in ("00000", "00001"):
        write_shard(spec, shard, d / f"{shard}.parquet", d / f"{shard}.tar", d / f"{shard}_stats.json")
        paths.append(d / f"{shard}.tar")
    return paths


def write_small_eval_sets(d: Path, val: int, test: int, sets=("identities", "objects")) -> dict:
    """Tiny eval sets, as the inputs metrics.clip_eval.eval_sets_from reads."""
    from unlearnflow.data.synthetic import SyntheticSpec, write_eval_set

    spec = SyntheticSpec.from_params(small_synthetic())
    files = {}
    for s in sets:
        out = {"val": d / f"{s}_val.tar", "test": d / f"{s}_test.tar", "classes": d / f"{s}.json"}
        write_eval_set(spec, s, {"val": val, "test": test}, out)
        files |= {f"{s}_val": out["val"], f"{s}_test": out["test"], f"{s}_classes": out["classes"]}
    return files


def small_config(**sections) -> dict:
    """A config for end-to-end runs: the default's shape, tiny sizes."""
    cfg = {
        "data": {
            "shards": ["00000", "00001"],
            "synthetic": small_synthetic() | {"samples_per_shard": 300},
            "eval": {
                "identities": {"source": "synthetic", "per_class": {"val": 2, "test": 3}},
                "objects": {"source": "synthetic", "per_class": {"val": 2, "test": 3}},
                "styles": {"source": "synthetic", "per_class": {"val": 1, "test": 1}},
            },
        },
        "selection": {"retain_size": 100},
        "targets": [
            {"id": "mira_castell", "name": "Mira Castell", "kind": "identity"},
            {"id": "kite", "name": "kite", "kind": "object"},
        ],
        # the image-to-image branch is off here (its classes are config.yaml's
        # objects); tests/test_i2i.py turns it on with tiny sizes
        "i2i": {"run_methods": []},
        # likewise the text-to-image branch (config.yaml's targets); tests/test_t2i.py turns it on
        "t2i": {"targets": []},
        # the attacks run where a test asks for results/tables/robustness.csv
        # (tests/test_attacks.py, tests/test_t2i.py), not in every `all`
        "attacks": {"in_all": False},
    }
    del cfg["data"]["synthetic"]["seed"]
    for key, value in sections.items():
        cfg[key] = value
    return cfg


class Workflow:
    """Runs the repo's Snakefile (or a copy's) in a scratch directory, as a
    subprocess (snakemake's Python API is process-global and ignores profiles)."""

    def __init__(self, workdir: Path, repo: Path = REPO):
        self.workdir = workdir
        self.repo = repo

    def write_config(self, cfg: dict) -> Path:
        path = self.workdir / "config.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def run(self, *args: str, cfg: dict | None = None, check: bool = True, timeout: int = 600):
        if cfg is not None:
            self.write_config(cfg)
        cmd = [
            str(BIN / "snakemake"),
            "--snakefile", str(self.repo / "Snakefile"),
            "--directory", str(self.workdir),
            "--configfile", str(self.workdir / "config.yaml"),
            "--cores", "2",
            *args,
        ]  # fmt: skip
        env = dict(
            os.environ,
            PATH=f"{BIN}:{os.environ.get('PATH', '')}",
            NO_ALBUMENTATIONS_UPDATE="1",
            OMP_WAIT_POLICY="PASSIVE",
            # every job checks its rule <-> stage contract (unlearnflow.cli)
            UNLEARNFLOW_CONTRACT="strict",
        )
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        out = proc.stdout + proc.stderr
        if check and proc.returncode != 0:
            raise AssertionError(f"snakemake failed ({proc.returncode}):\n{out[-6000:]}")
        return proc.returncode, out


@pytest.fixture
def workflow(tmp_path):
    return Workflow(tmp_path)


def copy_repo(dest: Path) -> Path:
    """The workflow and the library, copied: a test may edit the copy's
    source (the copy's Snakefile and jobs run the copy's src/)."""
    import shutil

    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("workflow", "src", "profiles", "envs"):
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    for name in ("Snakefile", "config.yaml"):
        shutil.copy2(REPO / name, dest / name)
    return dest


@pytest.fixture
def repo_workflow(tmp_path):
    """A Workflow on a copy of the repo (``.repo``), run in ``run/``."""
    repo = copy_repo(tmp_path / "repo")
    (tmp_path / "run").mkdir()
    return Workflow(tmp_path / "run", repo=repo)
