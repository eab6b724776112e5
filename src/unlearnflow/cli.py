"""Entry points: one stage per Snakemake rule, looked up by the rule's name
(:data:`unlearnflow.registry.STAGES`: the functions of :mod:`unlearnflow.stages`).

Every stage is a function ``stage(inp: dict, out: dict, params: dict)``
whose dicts map the rule's input, output and params names to values. The
Snakemake rules call them through ``workflow/scripts/stage.py`` (which passes
the ``snakemake`` object to :func:`run_from_snakemake`); the same stages run
by hand with::

    python -m unlearnflow STAGE --input name=path ... --output name=path ... \
        --params '{"key": value}'
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import sys
import time
import traceback
from typing import Callable

from .io import UnlearnflowError
from .registry import STAGES  # rule name -> "module:function"


def get_stage(name: str) -> Callable[[dict, dict, dict], None]:
    if name not in STAGES:
        raise UnlearnflowError(f"unknown stage {name!r}; known stages: {', '.join(sorted(STAGES))}")
    module, func = STAGES[name].split(":")
    return getattr(importlib.import_module(module), func)


class ImportClock:
    """Wall seconds spent in the outermost ``import`` statements while
    active (the field libraries a stage loads lazily), so a job's log can
    tell its start-up from its work: benchmarks/job_overhead.py reads it."""

    def __init__(self):
        import threading

        self.seconds, self._depth, self._orig = 0.0, threading.local(), None

    def _import(self, *args, **kwargs):
        depth = getattr(self._depth, "n", 0)
        if depth:
            return self._orig(*args, **kwargs)
        self._depth.n, t0 = 1, time.perf_counter()
        try:
            return self._orig(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0
            self._depth.n = 0

    def __enter__(self):
        import builtins

        self._orig, builtins.__import__ = builtins.__import__, self._import
        return self

    def __exit__(self, *exc):
        import builtins

        builtins.__import__ = self._orig


def run_stage(name: str, inp: dict, out: dict, params: dict) -> None:
    from . import provenance

    stage = get_stage(name)
    t0 = time.time()
    logging.getLogger("unlearnflow").info("stage %s started", name)
    with provenance.running(name, dict(dict.items(params))), ImportClock() as clock:
        stage(inp, out, params)
    # torch's threads as the stage ran them (the rule's `threads`, via stage.py)
    torch = sys.modules.get("torch")
    threads = f", torch threads {torch.get_num_threads()}" if torch is not None else ""
    logging.getLogger("unlearnflow").info(
        "stage %s finished in %.1f s (imports %.2f s)%s", name, time.time() - t0, clock.seconds, threads
    )


# Modules that field libraries try-import but a job may not use, kept out of
# it (sys.modules None makes their import fail, which those libraries
# handle): timm imports wandb (~0.8 CPU-s) only to offer logging to it
# (img2dataset needs it to import at all); open_clip imports transformers
# (~0.5 CPU-s) for Hugging Face text towers, which only the diffusion
# pipelines' text encoders and an open_clip model with `hf_model_name` use
# (and torchmetrics, whose package import pulls in its BERT score: the
# image-to-image evaluation's SSIM / PSNR / LPIPS).
WANDB_RULES = frozenset({"laion_images"})
TRANSFORMERS_RULES = frozenset(
    {
        "export_clip",
        "pretrain_t2i",
        "export_t2i",
        "t2i_salun_masks",
        "unlearn_t2i",
        "generate_t2i",
        "evaluate_t2i",
        "evaluate_i2i",
        "attack_t2i",
        "relearn_t2i",
    }
)


def _mentions_hf_model(inp: dict, params: dict) -> bool:
    """Whether the job's params or an open_clip config among its inputs name
    a Hugging Face text tower (``hf_model_name``)."""
    if "hf_model_name" in json.dumps(dict(dict.items(params)), default=str):
        return True
    paths = [v for vs in dict.values(inp) for v in (vs if isinstance(vs, list) else [vs])]
    for p in paths:
        if str(p).endswith("open_clip_config.json") and os.path.exists(p):
            with open(p) as f:
                if "hf_model_name" in f.read():
                    return True
    return False


def keep_out_accidental_imports(rule: str, inp: dict, params: dict) -> list[str]:
    """Block the modules this job will not use; returns their names."""
    blocked = []
    if rule not in WANDB_RULES:
        blocked.append("wandb")
    if rule not in TRANSFORMERS_RULES and not _mentions_hf_model(inp, params):
        blocked.append("transformers")
    blocked = [m for m in blocked if m not in sys.modules]
    for m in blocked:
        sys.modules[m] = None
    return blocked


class Names(dict):
    """A rule's inputs, outputs or params as a stage sees them, recording
    which names the stage reads (``[]``, ``get``, ``in``) and which names it
    asks ``get`` for that the rule does not provide. Iterating over it counts
    as reading every name."""

    def __init__(self, data: dict, what: str):
        super().__init__(data)
        self.what = what
        self.read: set = set()
        self.missing: set = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        (self.read if super().__contains__(key) else self.missing).add(key)
        return super().get(key, default)

    def __contains__(self, key):
        if super().__contains__(key):
            self.read.add(key)
        return super().__contains__(key)

    def _all(self):
        self.read.update(super().keys())

    def __iter__(self):
        self._all()
        return super().__iter__()

    def keys(self):
        self._all()
        return super().keys()

    def items(self):
        self._all()
        return super().items()

    def values(self):
        self._all()
        return super().values()

    def copy(self):
        self._all()
        return dict(dict.items(self))


# params every rule passes that a stage need not read: its threads (set by
# stage.py) and the code fingerprint (a rerun trigger)
CONTRACT_EXEMPT = {"threads", "code"}


def contract_problems(rule: str, inp: Names, out: Names, params: Names, resources: dict) -> list[str]:
    """What breaks the rule <-> stage contract: params the rule passes but
    the stage never reads (each a pointless rerun trigger), params the stage
    looks up that the rule does not pass (a silent default), a torch device
    without a ``gpu`` resource."""
    problems = []
    unused = sorted(set(dict.keys(params)) - params.read - CONTRACT_EXEMPT)
    if unused:
        problems.append(f"params {unused} are passed by rule {rule} but never read by its stage")
    if params.missing:
        problems.append(f"params {sorted(params.missing)} are read by the stage but not passed by rule {rule}")
    if dict.__contains__(params, "device") and "gpu" not in resources:
        problems.append(f"rule {rule} runs on a device but has no gpu resource (common.smk: gpu_request)")
    if "code" not in dict.keys(params):
        problems.append(f"rule {rule} has no code fingerprint param (code=code_of(...))")
    return problems


def _plain(value):
    """Snakemake's Namedlists and Params -> plain lists, dicts and strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _named(namedlist) -> dict:
    return {name: _plain(value) for name, value in namedlist.items()}


def _log_to(path: str | None):
    """Send this process's stdout, stderr and logging to the rule's log file.

    Returns a writer to the original stderr, so a one-line error still
    reaches the terminal.
    """
    term = os.fdopen(os.dup(2), "w", buffering=1)
    if path:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    return term


def run_from_snakemake(smk) -> None:
    """Run the stage named like the rule, with the rule's input/output/params.

    Afterwards the rule <-> stage contract is checked (:func:`contract_problems`):
    a warning in the log, an error when ``UNLEARNFLOW_CONTRACT=strict`` (the
    test suite's setting)."""
    log = smk.log[0] if len(smk.log) else None
    term = _log_to(log)
    try:
        params = _named(smk.params)
        params.setdefault("threads", smk.threads)
        keep_out_accidental_imports(smk.rule, _named(smk.input), params)
        inp, out, params = Names(_named(smk.input), "input"), Names(_named(smk.output), "output"), Names(params, "params")
        run_stage(smk.rule, inp, out, params)
        problems = contract_problems(smk.rule, inp, out, params, dict(smk.resources.items()))
        for p in problems:
            logging.getLogger("unlearnflow").warning("contract: %s", p)
        if problems and os.environ.get("UNLEARNFLOW_CONTRACT") == "strict":
            raise UnlearnflowError("; ".join(problems))
    except UnlearnflowError as exc:
        traceback.print_exc()
        print(f"unlearnflow: error in rule {smk.rule}: {exc}", file=term)
        sys.exit(1)


def _pairs(items: list[str], what: str) -> dict:
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"--{what} expects name=path, got {item!r}")
        k, v = item.split("=", 1)
        if k in out:  # repeated names make a list (e.g. several shards)
            out[k] = (out[k] if isinstance(out[k], list) else [out[k]]) + [v]
        else:
            out[k] = v
    return out


_NAME_READ = re.compile(r"""\b(inp|out|params)(?:\[|\.get\()\s*["'](\w+)["']""")


def stage_names(name: str) -> dict[str, list[str]]:
    """The input, output and params names a stage's function reads, from its
    source (what ``python -m unlearnflow STAGE --help`` lists)."""
    import inspect

    names: dict[str, list[str]] = {"inp": [], "out": [], "params": []}
    for what, key in _NAME_READ.findall(inspect.getsource(get_stage(name))):
        if key not in names[what]:
            names[what].append(key)
    return names


def stage_help(name: str) -> str:
    import inspect

    fn = get_stage(name)
    doc = (inspect.getdoc(fn) or inspect.getdoc(sys.modules[fn.__module__]) or "").split("\n\n")[0]
    n = stage_names(name)
    rows = [f"{name} ({STAGES[name]})", doc, ""]
    for what, label in (("inp", "--input"), ("out", "--output")):
        rows.append(f"{label} NAME=PATH, names read: {', '.join(n[what]) or '(none)'}")
    rows.append(f"--params JSON keys read: {', '.join(n['params']) or '(none)'}")
    rows.append(f"(the rule {name} in workflow/rules/*.smk shows the values the pipeline passes)")
    return "\n".join(rows)


def check_config(paths: list[str]) -> list[str]:
    """Problems of config files, each naming its file (and line, for YAML
    syntax; key path, for the schema): what Snakemake reports only as "not
    valid JSON or YAML". The files are layered over config.yaml as Snakemake
    does (dicts merged, other values replaced) before the schema check."""
    from pathlib import Path

    import jsonschema
    import yaml
    from snakemake.utils import update_config  # the merge --configfile does

    repo = Path(__file__).resolve().parents[2]
    merged: dict = {}
    problems = []
    for path in [str(repo / "config.yaml"), *paths]:
        try:
            with open(path) as f:
                data = yaml.safe_load(f) or {}
        except OSError as exc:
            problems.append(f"{path}: cannot read ({exc.strerror})")
            continue
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
            problems.append(f"{path}: not valid YAML at {where}: {getattr(exc, 'problem', exc)}")
            continue
        if not isinstance(data, dict):
            problems.append(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
            continue
        update_config(merged, data)
    if problems:
        return problems
    with open(repo / "workflow/schemas/config.schema.yaml") as f:
        schema = yaml.safe_load(f)
    for err in sorted(jsonschema.Draft202012Validator(schema).iter_errors(merged), key=lambda e: list(e.path)):
        key = ".".join(str(p) for p in err.path) or "(top level)"
        problems.append(f"config {key}: {err.message}")
    if problems:
        return problems
    # what the DAG build checks beyond the schema: method names and params
    # (the method table), targets, data sources (unlearnflow.plan)
    from snakemake.utils import validate

    from .plan import Plan

    validate(merged, str(repo / "workflow/schemas/config.schema.yaml"))  # fills the schema's defaults
    try:
        Plan(merged)
    except ValueError as exc:
        problems.append(f"{' + '.join(paths) or 'config.yaml'}: {exc}")
    return problems


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "check-config":
        problems = check_config(argv[1:])
        for p in problems:
            print(f"unlearnflow: {p}", file=sys.stderr)
        if not problems:
            print(f"config OK: config.yaml + {' + '.join(argv[1:]) or 'nothing'}")
        return 1 if problems else 0
    if argv and argv[0] in STAGES and any(a in ("-h", "--help") for a in argv[1:]):
        print(stage_help(argv[0]))
        return 0
    ap = argparse.ArgumentParser(prog="unlearnflow", description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", help="stage name (= Snakemake rule name), 'list', or 'check-config FILE...'")
    ap.add_argument("--input", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--output", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--params", default="{}", help="JSON object, or @file.json")
    ap.add_argument("--log", default=None, help="write stdout/stderr/logging here")
    args = ap.parse_args(argv)
    if args.stage == "list":
        for name, target in sorted(STAGES.items()):
            print(f"{name:24s} {target}")
        return 0
    text = args.params
    if text.startswith("@"):
        with open(text[1:]) as f:
            text = f.read()
    try:
        params = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--params is not valid JSON: {exc}") from exc
    term = _log_to(args.log)
    inp, out = _pairs(args.input, "input"), _pairs(args.output, "output")
    try:
        run_stage(args.stage, inp, out, params)
    except UnlearnflowError as exc:
        print(f"unlearnflow: error: {exc}", file=term)
        return 1
    except KeyError as exc:
        key = exc.args[0] if exc.args else None
        names = stage_names(args.stage) if args.stage in STAGES else {}
        where = [w for w, d in (("params", params), ("inp", inp), ("out", out)) if key in names.get(w, []) and key not in d]
        if not where:
            raise
        flag = {"params": "--params key", "inp": "--input", "out": "--output"}[where[0]]
        print(
            f"unlearnflow: error: stage {args.stage} needs {flag} {key!r}; "
            f"`python -m unlearnflow {args.stage} --help` lists what it reads",
            file=term,
        )
        return 1
    return 0
