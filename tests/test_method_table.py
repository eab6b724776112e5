"""The method table (unlearnflow.method_table) and the plan built from it
(unlearnflow.plan): one place per method, defaults stated once, config errors
named, and a new method added by the documented steps (docs/architecture.md)
runs through the DAG into the tables and the report."""

import copy
import importlib
import json
import re
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, small_config
from unlearnflow import method_table as mt
from unlearnflow.plan import Plan
from unlearnflow.registry import METHODS


def full_config(**over) -> dict:
    """config.yaml as the Snakefile sees it: the schema's defaults filled in."""
    from snakemake.utils import validate

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    for k, v in over.items():
        cfg[k] = v
    validate(cfg, str(REPO / "workflow/schemas/config.schema.yaml"))
    return cfg


def test_the_readme_lists_the_table():
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- method table: start -->\n", 1)[1].split("\n<!-- method table: end -->", 1)[0]
    assert block == mt.markdown_list(), "README's method list is stale: python -m unlearnflow.method_table"
    for m in mt.TABLE:
        assert f"| {m.family} | `{m.name}` |" in block


def test_every_module_reads_its_defaults_from_the_table():
    assert METHODS == mt.modules()
    for m in mt.TABLE:
        module = importlib.import_module(m.module)
        assert callable(module.run), m.module
        assert module.DEFAULTS == dict(m.defaults), m.module
    # a copy: a caller changing it cannot change the table
    d = mt.defaults("clip", "slug")
    d["utility_budget"]["identity_acc1"] = 99
    assert mt.get("clip", "slug").defaults["utility_budget"]["identity_acc1"] == 5.0


def _defaults_in(node, path=""):
    """Every `default:` below a schema node that is not an empty object."""
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "default" and v != {}:
                found.append(path)
            found += _defaults_in(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += _defaults_in(v, f"{path}/{i}")
    return found


def test_no_method_default_is_stated_twice():
    """The schema states no method param's default, and config.yaml lists
    only params that depart from the table's defaults."""
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    nodes = {
        "methods": schema["properties"]["methods"],
        "t2i.methods": schema["properties"]["t2i"]["properties"]["methods"],
        "i2i.methods": schema["properties"]["i2i"]["properties"]["methods"],
        "$defs.finetune": schema["$defs"]["finetune"],
        "$defs.budget": schema["$defs"]["budget"],
    }
    for name, node in nodes.items():
        assert _defaults_in(node) == [], name
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    sections = {
        "clip": cfg.get("methods") or {},
        "t2i": cfg["t2i"].get("methods") or {},
        "i2i": cfg["i2i"].get("methods") or {},
    }
    for family, methods in sections.items():
        for name, params in methods.items():
            defaults = mt.defaults(family, name)
            same = sorted(k for k, v in (params or {}).items() if defaults[k] == v)
            assert not same, f"config.yaml restates {family} {name}'s defaults {same}"


def test_params_merge_and_unknown_names_are_errors_naming_the_key():
    p = mt.merge_params("clip", "ga", {"lr": 1e-4})
    assert p["lr"] == 1e-4 and p["forget_weight"] == 1.0 and p["epochs"] == mt.FINETUNE["epochs"]
    with pytest.raises(mt.MethodError, match=r"methods\.ga: clip method 'ga' has no params \['lrr'\]"):
        mt.merge_params("clip", "ga", {"lrr": 1e-4}, "methods.ga")
    with pytest.raises(mt.MethodError, match=r"unknown clip methods \['slugg'\].*known clip methods: \['slug'"):
        Plan(full_config(run_methods=["slugg"]))
    cfg = full_config()
    cfg["i2i"]["methods"]["lii"] = {"lr": 1e-3}  # a method that does not run is checked too
    with pytest.raises(mt.MethodError, match=r"config i2i\.methods: unknown i2i methods \['lii'\]"):
        Plan(cfg)
    cfg = full_config()
    cfg["t2i"]["methods"]["slug"]["layer_choise"] = "rank"
    with pytest.raises(mt.MethodError, match=r"t2i\.methods\.slug: .*\['layer_choise'\]"):
        Plan(cfg)


def test_the_plan_wires_inputs_and_costs_from_the_table():
    plan = Plan(full_config())
    assert plan.params["clip"]["slug"] == mt.defaults("clip", "slug")  # config.yaml sets none
    assert plan.params["t2i"]["slug"]["layer_choice"] == "rank"  # a departure config.yaml states
    assert plan.params["t2i"]["slug"]["ua_target"] == mt.defaults("t2i", "slug")["ua_target"] == 75.0
    # SLUG's probes are drawn as the evaluation draws (config.yaml: DDPM), and
    # the job's params say so: another evaluation sampler reruns the search
    assert mt.defaults("t2i", "slug")["search_sampler"] is None
    assert plan.params["t2i"]["slug"]["search_sampler"] == plan.method_params("t2i", "slug")["search_sampler"] == "ddpm"
    cfg = full_config()
    del cfg["t2i"]["sampling"]["sampler"]
    assert Plan(cfg).params["t2i"]["slug"]["search_sampler"] == "ddim"  # absent: the evaluation's DDIM
    cfg["t2i"]["methods"]["slug"]["search_sampler"] = "ddpm"
    assert Plan(cfg).params["t2i"]["slug"]["search_sampler"] == "ddpm"  # named: kept
    assert "search_sampler" not in plan.params["t2i"]["salun"]
    assert plan.params["i2i"]["li_proxy"]["retain_set"] == "proxy"
    assert plan.method_inputs("clip", "slug", "kite") == {
        "grad_forget": "results/grads/tiny_clip/kite/forget.safetensors",
        "layers": "results/layers/tiny_clip/kite.parquet",
    }
    assert plan.method_inputs("clip", "salun", "kite") == {"mask": "results/masks/tiny_clip/kite/salun_0.5.safetensors"}
    assert plan.method_inputs("t2i", "salun", "vellum") == {"mask": "results/masks/tiny_t2i/vellum/unet_salun_0.5.safetensors"}
    assert plan.method_inputs("clip", "ga", "kite") == {} and plan.method_inputs("clip", "base", "kite") == {}
    # text-to-image SLUG reads the judge only when its search judges with it (the default)
    cfg = full_config()
    cfg["t2i"]["methods"]["slug"]["criterion"] = "generate"
    assert set(Plan(cfg).method_inputs("t2i", "slug", "vellum")) == {"grad_forget", "layers"}
    assert plan.method_inputs("t2i", "slug", "vellum") == {
        "grad_forget": "results/grads/tiny_clip/vellum/forget.safetensors",
        "layers": "results/layers/tiny_clip/vellum.parquet",
        "judge": "results/models/judge/tiny_judge/judge.json",
        "judge_weights": "results/models/judge/tiny_judge/judge.safetensors",
    }
    # SLUG's cost: both gradient passes (the shared retain set's, here) and the layer analysis
    assert [r for r, _ in plan.cost_jobs("clip", "slug", "kite")] == [
        "clip_gradients", "clip_gradients", "layer_analysis", "unlearn_clip",
    ]  # fmt: skip
    owner = plan.retain_owner("kite")
    assert plan.cost_jobs("clip", "slug.s1", "kite")[1][1] == {"model": "tiny_clip", "target": owner, "set": "retain"}
    assert plan.cost_jobs("clip", "slug.s1", "kite")[-1][1]["method"] == "slug.s1"
    assert plan.cost_jobs("t2i", "salun", "vellum")[0] == ("t2i_salun_masks", {"t2i": "tiny_t2i", "target": "vellum"})
    # the heavy jobs: each once, every unlearning run among them
    jobs = plan.heavy_jobs()
    keys = [(r, tuple(sorted(w.items()))) for r, w in jobs]
    assert len(keys) == len(set(keys))
    runs = {w["method"] for r, w in jobs if r == "unlearn_clip"}
    assert runs == set(plan.clip_runs) == set(plan.methods)
    # no method reading a mask: no mask job, and gradients.keep candidates is allowed
    cfg = full_config(run_methods=["slug", "ga"])
    cfg["gradients"]["keep"] = "candidates"
    assert "salun_masks" not in {r for r, _ in Plan(cfg).heavy_jobs()}
    cfg["run_methods"] = ["slug", "salun"]
    with pytest.raises(ValueError, match="gradients.keep is 'candidates'"):
        Plan(cfg)


def test_a_partial_mapping_param_keeps_the_other_defaults():
    """utility_budget: {test_acc1: 1} keeps the identity budget (as a config
    file over config.yaml did when it stated the budget); t2i SLUG's
    criterion clip runs CLIP SLUG's search with its own nested params."""
    p = mt.merge_params("clip", "slug", {"utility_budget": {"test_acc1": 1.0}})
    assert p["utility_budget"] == {"identity_acc1": 5.0, "test_acc1": 1.0}
    p = mt.merge_params("clip", "ssd", {"utility_budget": {"style_acc1": 5.0}})
    assert p["utility_budget"] == {"identity_acc1": 5.0, "test_acc1": 3.0, "style_acc1": 5.0}
    t2i = mt.merge_params("t2i", "slug", {"clip_search": {"max_probes": 2}})
    assert t2i["clip_search"] == {**{k: v for k, v in mt.SLUG.items() if k != "max_layers_per_tower"}, "max_probes": 2}
    assert t2i["max_probes"] == 8  # the generate search's own
    with pytest.raises(mt.MethodError, match=r"t2i\.methods\.slug\.clip_search: clip method 'slug' has no params \['max_probs'\]"):
        mt.merge_params("t2i", "slug", {"clip_search": {"max_probs": 2}}, "t2i.methods.slug")
    # the defaults of the nested search travel in the job's params (a changed CLIP default reruns it)
    plan = Plan(full_config())
    assert plan.method_params("t2i", "slug")["clip_search"]["bracket_tol"] == mt.SLUG["bracket_tol"]


def test_a_mask_fraction_without_a_mask_file_is_an_error():
    cfg = full_config()
    cfg["methods"]["salun"] = {"mask_fraction": 0.55}
    with pytest.raises(ValueError, match=r"methods\.salun\.mask_fraction 0\.55 is not among masks\.fractions"):
        Plan(cfg)


# The documented steps of docs/architecture.md "How to add a method", done
# on a copy of the repo: 1. a module, 2. a table entry, 3. a config entry.
TOY_MODULE = '''"""Toy: scales the text projection (tests/test_method_table.py)."""

from . import MethodResult
from .. import method_table

DEFAULTS = method_table.defaults("clip", "toy")


def run(ctx, params):
    p = method_table.merge_params("clip", "toy", params)
    proj = ctx.bundle.model.text_projection.detach()
    return MethodResult(tensors={"text_projection": (proj * float(p["factor"])).cpu()}, info={"params": p})
'''
TOY_ENTRY = '''    Method("clip", "toy", "unlearnflow.methods.toy", {"factor": 1.0}, "a toy: scales the text projection"),
'''


def add_toy_method(repo: Path) -> None:
    (repo / "src/unlearnflow/methods/toy.py").write_text(TOY_MODULE)
    table = repo / "src/unlearnflow/method_table.py"
    text = table.read_text()
    anchor = "    # ---------------------------------------------------- text-to-image\n"
    assert text.count(anchor) == 1
    table.write_text(text.replace(anchor, TOY_ENTRY + anchor))


@pytest.mark.slow
def test_a_new_method_is_one_module_and_one_table_entry(repo_workflow):
    wf = repo_workflow
    add_toy_method(wf.repo)
    tiny_ga = {"epochs": 1, "max_steps": 3, "batch_size": 16}
    cfg = small_config(
        targets=[{"id": "mira_castell", "name": "Mira Castell", "kind": "identity"}],
        clip={"train": {"epochs": 1, "batch_size": 64}},
        run_methods=["toy", "ga"],
        methods={"toy": {"factor": -1.0}, "ga": tiny_ga},
        evaluation={"mia_seeds": 2},
    )
    cfg["data"]["heldout_shards"] = ["00005"]
    wf.run(cfg=cfg)
    res = wf.workdir / "results"
    table = pd.read_csv(res / "tables/clip_unlearning.csv")
    rows = table[table["target"] == "mira_castell"].set_index("method")
    assert set(rows.index) == {"original", "toy", "ga"}
    # a negated text projection turns every zero-shot ranking upside down
    assert rows.loc["toy", "fa1"] < rows.loc["original", "fa1"] and rows.loc["toy", "seconds"] > 0
    info = json.loads((res / "unlearn/tiny_clip/mira_castell/toy/info.json").read_text())
    assert info["params"] == {"factor": -1.0} and info["changed_tensors"] == ["text_projection"]
    costs = pd.read_csv(res / "tables/costs.csv", keep_default_na=False)
    assert {"tiny_clip/mira_castell/toy"} <= set(costs.loc[costs["rule"] == "unlearn_clip", "wildcards"])
    assert {"tiny_clip/mira_castell/toy"} <= set(costs.loc[costs["rule"] == "evaluate_clip", "wildcards"])
    # the report: the table's page shows the toy row
    wf.run("--report", str(wf.workdir / "report.zip"))
    with zipfile.ZipFile(wf.workdir / "report.zip") as z:
        (page,) = [n for n in z.namelist() if n.endswith("/clip_unlearning.html")]
        assert re.search(r"<td>toy</td>", z.read(page).decode())
    # a param the toy does not have is an error naming it, at DAG build
    bad = copy.deepcopy(cfg)
    bad["methods"]["toy"] = {"factr": 2.0}
    code, out = wf.run("-n", cfg=bad, check=False)
    assert code != 0 and "methods.toy: clip method 'toy' has no params ['factr']; its params: ['factor']" in out


def test_the_costs_table_reads_every_heavy_job_of_the_default_dag(workflow):
    """Every job of `all` (config.yaml: every branch, the attacks) whose rule
    writes a benchmark and is not a local rule is an input of costs_table:
    a new heavy rule cannot silently drop out of the costs."""
    import shutil

    shutil.copy(REPO / "config.yaml", workflow.workdir / "config.yaml")
    _, out = workflow.run("-n", "--forceall")
    blocks = re.split(r"\n\[[^\]]+\]\n", out)[1:]
    snakefile = (REPO / "Snakefile").read_text()
    local = set(re.findall(r"^    (\w+),$", snakefile.split("localrules:", 1)[1].split("\n\n", 1)[0], re.M))
    assert {"clip_table", "costs_table", "robustness_table"} <= local
    heavy, costs_inputs = set(), None
    for b in blocks:
        head = b.strip().split("\n", 1)[0]
        fields = dict(
            (m.group(1), m.group(2).strip()) for m in re.finditer(r"^\s+(input|benchmark): (.*)$", b, re.M)
        )
        rule = head.split()[-1].rstrip(":")
        if rule == "costs_table":
            costs_inputs = {f.strip() for f in fields["input"].split(",")}
        elif rule not in local and "benchmark" in fields:
            heavy.add(fields["benchmark"])
    assert costs_inputs is not None and len(heavy) > 150
    assert heavy == costs_inputs, (sorted(heavy - costs_inputs)[:5], sorted(costs_inputs - heavy)[:5])
