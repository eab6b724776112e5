"""Entry points: one stage per Snakemake rule, looked up by the rule's name.

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
import sys
import time
import traceback
from typing import Callable

from .io import UnlearnflowError

# rule name -> "module:function"; a rule's name leads to its code in one step
STAGES: dict[str, str] = {
    "synthetic_shard": "unlearnflow.data.synthetic:shard_stage",
    "synthetic_eval_set": "unlearnflow.data.synthetic:eval_stage",
    "laion_metadata": "unlearnflow.data.laion:metadata_stage",
    "laion_shard_metadata": "unlearnflow.data.laion:shard_metadata_stage",
    "laion_images": "unlearnflow.data.laion:images_stage",
    "ingest_eval_set": "unlearnflow.data.ingest:eval_stage",
    "select_sets": "unlearnflow.data.select:select_stage",
    "pretrain_clip": "unlearnflow.models.clip:pretrain_stage",
    "export_clip": "unlearnflow.models.clip:export_stage",
    "clip_gradients": "unlearnflow.gradients:gradients_stage",
    "layer_analysis": "unlearnflow.layers:analysis_stage",
    "unlearn_clip": "unlearnflow.methods:unlearn_stage",
    "evaluate_clip": "unlearnflow.metrics.clip_eval:evaluate_stage",
    "clip_table": "unlearnflow.tables:clip_table_stage",
    "clip_tradeoff": "unlearnflow.plots:tradeoff_stage",
    "salun_masks": "unlearnflow.masks:masks_stage",
    "slug_search_plot": "unlearnflow.plots:search_trace_stage",
    "costs_table": "unlearnflow.tables:costs_stage",
    "table_html": "unlearnflow.tables:html_stage",
    "pretrain_t2i": "unlearnflow.models.diffusion:pretrain_stage",
    "export_t2i": "unlearnflow.models.diffusion:export_stage",
    "t2i_salun_masks": "unlearnflow.methods.t2i_salun:masks_stage",
    "unlearn_t2i": "unlearnflow.methods.t2i:unlearn_t2i_stage",
    "generate_t2i": "unlearnflow.generate:generate_stage",
    "evaluate_t2i": "unlearnflow.metrics.t2i_eval:evaluate_stage",
    "t2i_table": "unlearnflow.tables:t2i_table_stage",
    "i2i_images": "unlearnflow.data.objects:images_stage",
    "i2i_sets": "unlearnflow.data.objects:sets_stage",
    "train_i2i": "unlearnflow.models.i2i:train_stage",
    "import_i2i": "unlearnflow.models.i2i:import_stage",
    "unlearn_i2i": "unlearnflow.methods.i2i:unlearn_i2i",
    "evaluate_i2i": "unlearnflow.metrics.i2i_eval:evaluate_stage",
    "i2i_table": "unlearnflow.metrics.i2i_eval:table_stage",
    "i2i_tsne": "unlearnflow.metrics.i2i_eval:tsne_stage",
}


def get_stage(name: str) -> Callable[[dict, dict, dict], None]:
    if name not in STAGES:
        raise UnlearnflowError(f"unknown stage {name!r}; known stages: {', '.join(sorted(STAGES))}")
    module, func = STAGES[name].split(":")
    return getattr(importlib.import_module(module), func)


def run_stage(name: str, inp: dict, out: dict, params: dict) -> None:
    stage = get_stage(name)
    t0 = time.time()
    logging.getLogger("unlearnflow").info("stage %s started", name)
    stage(inp, out, params)
    # torch's threads as the stage ran them (the rule's `threads`, via stage.py)
    torch = sys.modules.get("torch")
    threads = f", torch threads {torch.get_num_threads()}" if torch is not None else ""
    logging.getLogger("unlearnflow").info("stage %s finished in %.1f s%s", name, time.time() - t0, threads)


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
    """Run the stage named like the rule, with the rule's input/output/params."""
    log = smk.log[0] if len(smk.log) else None
    term = _log_to(log)
    try:
        params = _named(smk.params)
        params.setdefault("threads", smk.threads)
        run_stage(smk.rule, _named(smk.input), _named(smk.output), params)
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="unlearnflow", description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", help="stage name (= Snakemake rule name), or 'list'")
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
    try:
        run_stage(args.stage, _pairs(args.input, "input"), _pairs(args.output, "output"), params)
    except UnlearnflowError as exc:
        print(f"unlearnflow: error: {exc}", file=term)
        return 1
    return 0
