"""Code fingerprints, the rule <-> stage contract, GPU requests from one
table, checkpoints as inputs, provenance records."""

from __future__ import annotations

import ast
import importlib
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import unlearnflow
from conftest import BIN, REPO, small_config
from unlearnflow import provenance as P
from unlearnflow.cli import Names, contract_problems
from unlearnflow.io import InputFileError
from unlearnflow.registry import METHOD_RULES, METHODS, RULES, STAGES
from unlearnflow.stages.tables import provenance_index

MODULES = ["unlearnflow"] + [m.name for m in pkgutil.walk_packages(unlearnflow.__path__, "unlearnflow.")]


def ast_imports(name: str) -> tuple[set, set]:
    """The same question as provenance.direct_imports, asked of the ast."""
    path = P.module_file(name)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    project, other = set(), set()

    def add(mod):
        if P.module_file(mod) is not None:
            project.add(mod)
        elif mod and mod.split(".")[0] != "unlearnflow":
            other.add(mod.split(".")[0])

    for node in ast.walk(ast.parse(path.read_bytes())):
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name)
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            add(mod)
            for a in node.names:
                if P.module_file(f"{mod}.{a.name}") is not None:
                    project.add(f"{mod}.{a.name}")
    return project, other


@pytest.mark.parametrize("name", MODULES)
def test_the_import_scanner_finds_what_the_ast_finds(name):
    project, other = P.direct_imports(name)
    want_project, want_other = ast_imports(name)
    assert set(project) == want_project
    assert want_other <= set(other)  # the text scan may see more (docstrings): never less


def ast_stage_imports(module: str, function: str) -> tuple[set, set]:
    """The same question as provenance.stage_imports, asked of the ast: the
    module's top level and decorators, the function and, transitively, every
    module-level function it names."""
    path = P.module_file(module)
    tree = ast.parse(path.read_bytes())
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    todo = [n for n in tree.body if n not in funcs.values()] + [d for f in funcs.values() for d in f.decorator_list]
    todo.append(funcs[function])
    named, imports, froms = {function}, [], []
    while todo:
        for node in ast.walk(todo.pop()):
            if isinstance(node, ast.Name) and node.id in funcs and node.id not in named:
                named.add(node.id)
                todo.append(funcs[node.id])
            elif isinstance(node, ast.Import):
                imports += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                froms.append((node.level, node.module or "", [a.name for a in node.names]))
    project, other = P._resolve(module.rpartition(".")[0], imports, froms)
    return set(project), set(other)


@pytest.mark.parametrize("rule", sorted(STAGES))
def test_the_stage_scanner_finds_what_the_ast_finds(rule):
    module, function = STAGES[rule].split(":")
    project, other = P.stage_imports(module, function)
    want_project, want_other = ast_stage_imports(module, function)
    assert set(project) == want_project
    assert want_other <= set(other)


def test_stage_modules_mirror_the_rules_files_and_import_algorithms_lazily():
    """One stage module per rules file, one function per rule; what a stage
    module imports at its top level is in every one of its rules'
    fingerprints, so it imports no algorithm there (nor torch: a table job
    stays torch-free)."""
    rules_files = {p.stem for p in (REPO / "workflow/rules").glob("*.smk")} - {"common"}
    assert set(RULES) == rules_files
    for name in RULES:
        module = f"unlearnflow.stages.{name}"
        text = P.module_file(module).read_text()
        smk = (REPO / f"workflow/rules/{name}.smk").read_text()
        assert set(RULES[name]) == set(re.findall(r"^\s*(?:rule|checkpoint) (\w+):", smk, re.M)) - {"data"}
        assert all(callable(getattr(importlib.import_module(module), rule)) for rule in RULES[name])
        top = "\n".join(line for line in text.splitlines() if re.match(r"(from|import) ", line))
        assert set(re.findall(r"^from \.\.(\w*)", top, re.M)) <= {"io"}, f"{module} imports algorithms at its top level"
        assert "torch" not in top and "pandas" not in top


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """provenance reading a copy of the package, so a test can edit it."""
    root = tmp_path / "unlearnflow"
    shutil.copytree(P.ROOT, root, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(P, "ROOT", root)

    def clear():
        for f in (P.direct_imports, P._stage_parts, P.stage_imports, P.closure, P._file_digest, P.code_fingerprint):
            f.cache_clear()

    clear()
    yield root, clear
    clear()


def all_fingerprints() -> dict:
    out = {}
    for rule in STAGES:
        for method in METHODS[METHOD_RULES[rule]] if rule in METHOD_RULES else [None]:
            out[(rule, method)] = P.code_fingerprint(rule, method)
    return out


def changed_by(root: Path, clear, rel: str, text: str = "\n# an edit\n") -> set:
    before = all_fingerprints()
    path = root / rel
    original = path.read_text()
    path.write_text(original + text)
    clear()
    after = all_fingerprints()
    path.write_text(original)
    clear()
    assert all_fingerprints() == before  # reverting restores every fingerprint
    return {k for k in before if before[k] != after[k]}


def test_a_fingerprint_changes_with_the_source_its_rule_runs_and_nothing_else(package_copy):
    root, clear = package_copy
    # a method: its own unlearning job on CLIP, and SLUG on the diffusion text
    # encoder (methods/t2i_slug.py imports it); no other method, no data stage
    assert changed_by(root, clear, "methods/slug.py") == {("unlearn_clip", "slug"), ("unlearn_t2i", "slug")}
    assert changed_by(root, clear, "methods/ga.py") == {("unlearn_clip", "ga")}
    # the selection: select_sets and select_retain (downstream reruns follow from their outputs),
    # SalUn on diffusion, which matches the target's name with its regex, and
    # pretrain_t2i (t2i.train.oversample matches concept names with it); no other t2i rule
    assert changed_by(root, clear, "data/select.py") == {
        ("select_sets", None), ("select_retain", None), ("t2i_salun_masks", None), ("unlearn_t2i", "salun"),
        ("pretrain_t2i", None),
    }  # fmt: skip
    # the synthetic renderer: every stage that draws pictures
    drawn = {r for r, _ in changed_by(root, clear, "data/render.py")}
    assert {"synthetic_shard", "synthetic_eval_set", "i2i_images"} <= drawn and "select_sets" not in drawn
    # a comment counts (simple and correct beats clever)
    assert changed_by(root, clear, "tables.py", "# a comment\n")
    # an algorithm module that one stage function imports: that rule, not
    # the others of the same stage module (stages/tables.py, stages/unlearn.py)
    assert changed_by(root, clear, "plots.py") == {("clip_tradeoff", None), ("slug_search_plot", None)}
    assert changed_by(root, clear, "metrics/mia.py") == {("evaluate_clip", None)}
    assert changed_by(root, clear, "metrics/i2i_eval.py") == {("evaluate_i2i", None), ("i2i_table", None), ("i2i_tsne", None)}
    # the registry is glue: adding a method reruns nothing
    assert changed_by(root, clear, "registry.py", "\nMETHODS['clip']['new'] = 'unlearnflow.methods.new'\n") == set()


def test_a_stage_module_is_in_the_fingerprint_of_each_of_its_rules_and_only_theirs(package_copy):
    root, clear = package_copy
    for name in ("tables", "t2i"):
        rules = {(r, m) for r in RULES[name] for m in (METHODS[METHOD_RULES[r]] if r in METHOD_RULES else [None])}
        assert changed_by(root, clear, f"stages/{name}.py") == rules
    # a helper's imports count for the stages that call it, not the others
    attacks = "unlearnflow.stages.attacks"
    assert "unlearnflow.metrics.clip_eval" in P.stage_imports(attacks, "relearn_clip")[0]  # via _clip_setup
    assert "unlearnflow.metrics.clip_eval" not in P.stage_imports(attacks, "relearn_t2i")[0]
    assert "unlearnflow.models.diffusion" not in P.stage_imports(attacks, "attack_clip")[0]
    # a helper passed on by name runs too (the family's loader and context)
    assert "unlearnflow.models.diffusion" in P.stage_imports("unlearnflow.stages.t2i", "unlearn_t2i")[0]  # _load_t2i
    assert "unlearnflow.metrics.clip_eval" in P.stage_imports("unlearnflow.stages.unlearn", "unlearn_clip")[0]  # _clip_context


def test_a_fingerprint_holds_the_versions_of_the_libraries_its_sources_import(monkeypatch):
    d = P.describe("unlearn_clip", "slug")
    assert {"torch", "open_clip_torch"} <= set(d["libraries"]) and "unlearnflow/methods/slug.py" in d["files"]
    assert "torch" not in P.describe("synthetic_shard")["libraries"]  # drawing pictures needs no torch
    before = {r: P.code_fingerprint(r) for r in ("synthetic_shard", "clip_gradients")}
    real = P.library_version
    monkeypatch.setattr(P, "library_version", lambda dist: "9.9" if dist == "torch" else real(dist))
    P.code_fingerprint.cache_clear()
    try:
        assert P.code_fingerprint("clip_gradients") != before["clip_gradients"]
        assert P.code_fingerprint("synthetic_shard") == before["synthetic_shard"]
    finally:
        P.code_fingerprint.cache_clear()


def test_unknown_rules_and_methods_are_named():
    with pytest.raises(ValueError, match="rule 'nope' has no stage"):
        P.code_fingerprint("nope")
    with pytest.raises(ValueError, match="unknown clip method 'slugg'.*'slug'"):
        P.code_fingerprint("unlearn_clip", "slugg")


def test_params_hash_and_record_ids():
    a = {"seed": 0, "params": {"lr": 1e-5}, "threads": 1, "code": "x"}
    assert P.params_hash(a) == P.params_hash({"params": {"lr": 1e-5}, "seed": 0, "threads": 4, "code": "y"})
    assert P.params_hash(a) != P.params_hash({**a, "seed": 1})
    assert P.record_id({"a": 1, "b": [1, 2]}) == P.record_id({"b": [1, 2], "a": 1}) != P.record_id({"a": 2, "b": [1, 2]})


def test_provenance_index_refuses_a_record_that_does_not_match_its_id(tmp_path):
    rec = {"rule": "evaluate_clip", "code": "c", "params_hash": "p"}
    good = tmp_path / "a.provenance.json"
    good.write_text(json.dumps({P.record_id(rec): rec}))
    provenance_index({"tables": [str(good)]}, {"json": str(tmp_path / "p.json")}, {})
    assert json.loads((tmp_path / "p.json").read_text()) == {P.record_id(rec): rec}
    bad = tmp_path / "b.provenance.json"
    bad.write_text(json.dumps({P.record_id(rec): {**rec, "code": "edited"}}))
    with pytest.raises(InputFileError, match="b.provenance.json.*does not match"):
        provenance_index({"tables": [str(good), str(bad)]}, {"json": str(tmp_path / "q.json")}, {})


def test_a_table_row_without_a_provenance_record_is_an_error(tmp_path):
    from unlearnflow.tables import clip_table, write_provenance

    rec = {"target": "t", "method": "ga", "fa1": 1.0, "fa5": 2.0, "identity_acc1": 3.0, "test_acc1": 4.0, "mia": 50.0}
    with_prov = P.stamp(rec, {"rule": "evaluate_clip"})
    df = clip_table([with_prov, {**rec, "method": "ft"}], {})
    with pytest.raises(InputFileError, match="no provenance record.*forcerun evaluate_clip"):
        write_provenance(tmp_path / "t.json", [with_prov, rec], df)
    df = clip_table([with_prov], {})
    write_provenance(tmp_path / "t.json", [with_prov], df)
    index = json.loads((tmp_path / "t.json").read_text())
    assert set(df["provenance"]) == set(index) and index[with_prov["provenance_id"]] == {"rule": "evaluate_clip"}


# ------------------------------------------------------------ the contract
def test_the_contract_names_unused_and_unprovided_params_and_a_missing_gpu_resource():
    params = Names({"code": "c", "threads": 1, "seed": 0, "lr": 1.0, "device": "auto"}, "params")
    params["seed"], params.get("device"), params.get("mask_fraction", 0.5)
    problems = contract_problems("r", Names({}, "input"), Names({}, "output"), params, {"mem_mb": 1})
    assert any("params ['lr'] are passed by rule r but never read" in p for p in problems)
    assert any("params ['mask_fraction'] are read by the stage but not passed" in p for p in problems)
    assert any("no gpu resource" in p for p in problems)
    ok = Names({"code": "c", "threads": 1, "x": 1}, "params")
    dict(ok)  # iterating reads every name
    assert contract_problems("r", Names({}, "input"), Names({}, "output"), ok, {}) == []
    assert "no code fingerprint" in contract_problems("r", Names({}, "i"), Names({}, "o"), Names({}, "p"), {})[0]


def snakemake(workdir: Path, cfg: dict, *args: str) -> str:
    import yaml

    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), *args]  # fmt: skip
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}", NO_ALBUMENTATIONS_UPDATE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def with_branches(cfg: dict) -> dict:
    cfg["t2i"] = {"targets": [{"id": "vellum", "name": "Vellum", "kind": "style"}]}
    cfg["i2i"] = {"forget_classes": ["ball"], "retain_classes": ["crate"]}
    return cfg


def test_every_rule_has_a_stage_and_every_stage_a_rule(tmp_path):
    """--list-rules on the default and on each real-data / real-model config
    (every `if` branch of the rules), against the registry."""
    rules = set()
    variants = [
        {},
        # real data: the trained judge renders synthetic concepts, so a real
        # run names a judge (a checkpoint, or the CLIP)
        {"data": {"source": "laion", "shards": ["00000"], "laion": {"metadata_url": "http://127.0.0.1:9/x.parquet"}},
         "t2i": {"judge": {"kind": "clip"}}},  # fmt: skip
        {"clip": {"source": "open_clip", "arch": "ViT-B-32", "pretrained": "laion400m_e32"}},
        {"t2i": {"source": "pretrained", "pretrained": "org/model", "targets": []}},
        {"i2i": {"source": "checkpoint", "checkpoint": "x.pth", "run_methods": []}},
        {"selection": {"shared_retain": True}},
    ]
    for i, over in enumerate(variants):
        d = tmp_path / str(i)
        d.mkdir()
        cfg = with_branches(small_config())
        for key, value in over.items():
            cfg[key] = {**cfg.get(key, {}), **value}
        out = snakemake(d, cfg, "--list-rules")
        rules |= {line.strip() for line in out.splitlines() if re.fullmatch(r"\w+", line.strip())}
    assert rules - {"all", "data"} == set(STAGES)


def test_real_data_with_the_synthetic_judge_is_refused(tmp_path):
    """The trained judge knows only the synthetic concepts: on LAION data it
    would score real pictures against renders, so the DAG refuses to build."""
    import yaml

    cfg = with_branches(small_config())
    cfg["data"] = {**cfg["data"], "source": "laion", "shards": ["00000"], "laion": {"metadata_url": "http://127.0.0.1:9/x.parquet"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = subprocess.run([str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
                           "--configfile", str(tmp_path / "config.yaml"), "-n"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "t2i.judge.kind: train" in out and "data.source is 'laion'" in out, out[-2000:]


def resources_by_rule(out: str) -> dict[str, set]:
    """{rule: {its jobs' gpu values}} from a dry run's job listing."""
    found: dict[str, set] = {}
    for block in out.split("\nrule ")[1:]:
        rule = block.split(":", 1)[0].strip()
        m = re.search(r"resources: .*?gpu=(\d+)", block)
        found.setdefault(rule, set()).add(int(m.group(1)) if m else None)
    return found


def test_every_torch_rule_asks_for_a_gpu_on_cuda_and_none_on_cpu(tmp_path):
    cfg = with_branches(small_config()) | {"attacks": {"in_all": True}}
    for branch in ("clip", "t2i", "i2i"):
        cfg.setdefault(branch, {})["device"] = "cuda"
    gpus = resources_by_rule(snakemake(tmp_path, cfg, "-n", "--cores", "2"))
    torch_rules = {"pretrain_clip", "clip_gradients", "unlearn_clip", "evaluate_clip", "pretrain_t2i",
                   "t2i_salun_masks", "unlearn_t2i", "generate_t2i", "evaluate_t2i", "train_judge",
                   "train_i2i", "unlearn_i2i", "evaluate_i2i",
                   "attack_clip", "relearn_clip", "attack_t2i", "relearn_t2i"}  # fmt: skip
    assert {r for r, v in gpus.items() if v == {1}} == torch_rules
    assert all(v == {None} for r, v in gpus.items() if r not in torch_rules), gpus
    for branch in ("clip", "t2i", "i2i"):
        cfg[branch]["device"] = "cpu"
    gpus = resources_by_rule(snakemake(tmp_path, cfg, "-n", "--cores", "2"))
    assert all(v == {0} for r, v in gpus.items() if r in torch_rules), gpus


# ------------------------------------------------------------ checkpoints
def test_replacing_an_imported_checkpoint_reruns_its_import(workflow, tmp_path):
    """A checkpoint file is an input of its import (and its size and mtime a
    param): replacing it, even by an older copy, reruns the import."""
    import torch

    from test_i2i import TINY_MAE, tiny_model
    from test_workflow import job_counts

    def save(seed: int, path: Path) -> None:
        state = {k.split(".", 1)[1]: v for k, v in tiny_model(seed=seed).state_dict().items()}
        state["mask_token"] = torch.zeros(1, 1, 16)
        torch.save({"model": state}, path)

    ckpt = tmp_path / "mae.pth"
    save(3, ckpt)
    cfg = small_config()
    cfg["i2i"] = {"source": "checkpoint", "adapter": "timm_mae", "checkpoint": str(ckpt), "model_cfg": TINY_MAE,
                  "forget_classes": ["ball"], "retain_classes": ["crate"], "run_methods": []}  # fmt: skip
    target = "results/models/tiny_i2i/i2i_model.json"
    workflow.run(target, cfg=cfg)
    info = json.loads((workflow.workdir / target).read_text())
    assert info["source_files"] == 1 and info["source_stamp"] == P.source_stamp(str(ckpt))
    assert "Nothing to be done" in workflow.run(target, "-n", cfg=cfg)[1]
    # a new checkpoint with an older mtime (cp -p of an old file): still a rerun
    old = os.stat(ckpt).st_mtime_ns - 10**12
    save(4, ckpt)
    os.utime(ckpt, ns=(old, old))
    _, out = workflow.run(target, "-n", cfg=cfg)
    assert job_counts(out) == {"import_i2i": 1}
    workflow.run(target, cfg=cfg)
    # a newer file: the input's mtime alone reruns it
    save(5, ckpt)
    _, out = workflow.run(target, "-n", "--rerun-triggers", "mtime", cfg=cfg)
    assert job_counts(out) == {"import_i2i": 1}


def test_local_checkpoint_folders_are_inputs_and_names_are_not(tmp_path):
    folder = tmp_path / "sd"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet/model.safetensors").write_bytes(b"x")
    (folder / "model_index.json").write_text("{}")
    (folder / ".cache").mkdir()
    (folder / ".cache/lock").write_text("")
    assert P.source_files(str(folder)) == [str(folder / "model_index.json"), str(folder / "unet/model.safetensors")]
    assert P.source_files("stabilityai/stable-diffusion-2-1") == [] and P.source_stamp("laion400m_e32") is None
    stamp = P.source_stamp(str(folder))
    (folder / "unet/model.safetensors").write_bytes(b"yy")
    assert P.source_stamp(str(folder)) != stamp
    # the DAG lists them as the export's inputs
    cfg = small_config()
    cfg["t2i"] = {"source": "pretrained", "pretrained": str(folder), "targets": [{"id": "vellum", "name": "Vellum", "kind": "style"}]}
    out = snakemake(tmp_path, cfg, "-n", "--cores", "2", "results/models/tiny_t2i/model.json")
    block = out.split("rule export_t2i:", 1)[1].split("\n\n", 1)[0]
    assert str(folder / "unet/model.safetensors") in block and str(folder / "model_index.json") in block


def test_jobs_run_the_library_of_their_own_checkout(repo_workflow):
    """stage.py puts the checkout's src/ first: a copy's jobs run the copy's
    code, not an editable install of another checkout (the fingerprints are
    of the copy's code, so anything else would record a lie)."""
    select = repo_workflow.repo / "src/unlearnflow/data/select.py"
    select.write_text(select.read_text() + "\nprint('the copy ran')\n")
    cfg = small_config(targets=[{"id": "mira_castell", "name": "Mira Castell", "kind": "identity"}])
    repo_workflow.run("results/data/mira_castell/summary.json", cfg=cfg)
    log = (repo_workflow.workdir / "logs/select_sets/mira_castell.log").read_text()
    assert "the copy ran" in log


@pytest.mark.parametrize("threads, policy", [(1, "PASSIVE"), (2, None)])
def test_a_job_waits_passively_only_when_it_has_one_thread(monkeypatch, threads, policy):
    """stage.py: OMP_WAIT_POLICY=PASSIVE for a one-thread job (busy-waiting
    threads slowed a job beside them 13x); a job given several threads owns
    that many cores and keeps OpenMP's spinning default (passive waits made
    its steps 1.6x slower: benchmarks/omp_wait.py); the thread variables
    are the job's threads either way."""
    import runpy
    from types import SimpleNamespace

    for var in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    stage = REPO / "workflow/scripts/stage.py"
    job = SimpleNamespace(threads=threads, scriptdir=str(stage.parent))
    runpy.run_path(str(stage), init_globals={"snakemake": job}, run_name="not_main")  # sets the variables, runs nothing
    assert os.environ.get("OMP_WAIT_POLICY") == policy
    assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == str(threads)
