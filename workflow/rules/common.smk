# Config lookups shared by the rules, and nothing else: functions only, so
# the files that define rules stay pure wiring. No torch import here, since
# building the DAG must stay fast.
import re

SHARDS = list(config["data"]["shards"])
HELDOUT_SHARDS = list(config["data"]["heldout_shards"])
MODEL = config["clip"]["name"]
METHODS = list(config["run_methods"])
TARGETS = {t["id"]: t for t in config["targets"]}
EVAL_SETS = ["identities", "objects", "styles"]
SPLITS = ["val", "test"]


def check_targets():
    overlap = sorted(set(SHARDS) & set(HELDOUT_SHARDS))
    if overlap:
        raise ValueError(
            f"config data: shards {overlap} are both training and held-out shards"
        )
    ids = [t["id"] for t in config["targets"]]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"config targets: duplicate id(s) {dup}")
    if config["data"]["source"] != "synthetic":
        return
    syn = config["data"]["synthetic"]
    known = {
        "identity": syn["identities"],
        "object": syn["objects"],
        "style": syn["styles"],
    }
    for t in config["targets"]:
        names = known[t["kind"]]
        if t["name"].lower() not in {n.lower() for n in names}:
            raise ValueError(
                f"config targets: {t['id']!r} names {t['kind']} {t['name']!r}, "
                f"which the synthetic benchmark does not draw; "
                f"known {t['kind']} names: {names}"
            )


check_targets()


def target_config(target_id):
    if target_id not in TARGETS:
        raise ValueError(
            f"unknown target {target_id!r}; known targets: {sorted(TARGETS)}"
        )
    return TARGETS[target_id]


def one_of(values):
    """A wildcard constraint matching exactly these values (or nothing)."""
    return "|".join(re.escape(v) for v in values) or "(?!x)x"


def synthetic_concepts():
    """What every synthetic picture depends on (its signatures)."""
    syn = config["data"]["synthetic"]
    return {
        "seed": config["seeds"]["data"],
        "image_size": syn["image_size"],
        "identities": syn["identities"],
        "objects": syn["objects"],
        "styles": syn["styles"],
        "jpeg_quality": syn["jpeg_quality"],
    }


def synthetic_shard_spec():
    syn = config["data"]["synthetic"]
    return synthetic_concepts() | {
        "samples_per_shard": syn["samples_per_shard"],
        "mix": syn["mix"],
        "failure_rate": syn["failure_rate"],
    }


def eval_sets_from(source):
    return [s for s in EVAL_SETS if config["data"]["eval"][s]["source"] == source]


def data_outputs():
    return expand(
        "results/data/{target}/{name}",
        target=sorted(TARGETS),
        name=["forget.tar", "retain.tar", "heldout.tar", "summary.json"],
    ) + expand(
        "results/data/eval/{evalset}/{name}",
        evalset=EVAL_SETS,
        name=["val.tar", "test.tar", "classes.json"],
    )


def model_files(model=MODEL):
    d = f"results/models/{model}"
    return {
        "config": f"{d}/open_clip_config.json",
        "weights": f"{d}/open_clip_model.safetensors",
        "info": f"{d}/model.json",
    }


def eval_set_files(split):
    """Inputs named like metrics.clip_eval.eval_sets_from expects."""
    files = {}
    for s in ("identities", "objects"):
        files[f"{s}_{split}"] = f"results/data/eval/{s}/{split}.tar"
        files[f"{s}_classes"] = f"results/data/eval/{s}/classes.json"
    return files


def method_inputs(wildcards):
    """What each method reads beyond the model and the evaluation sets."""
    t, m = wildcards.target, MODEL
    needs = {
        "slug": {
            "grad_forget": f"results/grads/{m}/{t}/forget.safetensors",
            "layers": f"results/layers/{m}/{t}.parquet",
        },
        "ft": {},
        "ga": {},
        "ga_ft": {},
        "ssd": {},
        "salun": {"mask": mask_file(t, salun_fraction(), m)},
    }
    if wildcards.method not in needs:
        raise ValueError(
            f"unknown method {wildcards.method!r}; known methods: {sorted(needs)}"
        )
    return needs[wildcards.method]


MASK_FRACTIONS = [float(f) for f in config["masks"]["fractions"]]


def method_params(method):
    return config["methods"].get(method, {})


def salun_fraction():
    f = float(method_params("salun").get("mask_fraction", 0.5))
    if f not in MASK_FRACTIONS:
        raise ValueError(
            f"methods.salun.mask_fraction {f} is not among masks.fractions {MASK_FRACTIONS}"
        )
    return f


def mask_file(target, fraction, model=MODEL):
    return f"results/masks/{model}/{target}/salun_{float(fraction)}.safetensors"


# the benchmark files whose sum is a method's cost (SLUG: one pass each set,
# the layer analysis and the search; SalUn: the forget pass and the masks)
def method_cost_files(target, method, model=MODEL):
    b = "results/benchmarks"
    own = [f"{b}/unlearn_clip/{model}/{target}/{method}.tsv"]
    forget_pass = f"{b}/clip_gradients/{model}/{target}/forget.tsv"
    if method == "slug":
        return [
            forget_pass,
            f"{b}/clip_gradients/{model}/{target}/retain.tsv",
            f"{b}/layer_analysis/{model}/{target}.tsv",
        ] + own
    if method == "salun":
        return [forget_pass, f"{b}/salun_masks/{model}/{target}.tsv"] + own
    return own


def clip_table_costs():
    return {
        t: {m: method_cost_files(t, m) for m in METHODS} | {"original": []}
        for t in TARGETS
    }


def search_plots(model=MODEL):
    """The step-size search traces (SLUG only: the others search no layer)."""
    if "slug" not in METHODS:
        return []
    return expand(
        "results/unlearn/{model}/{target}/slug/search.png", model=model, target=TARGETS
    )


def clip_outputs():
    return (
        expand("results/tables/clip_unlearning.{ext}", ext=["csv", "md", "tex"])
        + ["results/tables/clip_tradeoff.png"]
        + expand("results/layers/{model}/{target}.png", model=MODEL, target=TARGETS)
        + search_plots()
    )


def heavy_benchmarks(model=MODEL):
    """The benchmark file of every heavy job in the DAG of `all`, from the
    same wildcard values (shards, eval sets, targets, methods, model); the
    cheap local rules (tables, plots) are left out."""
    b = "results/benchmarks"
    shards = SHARDS + HELDOUT_SHARDS
    if config["data"]["source"] == "synthetic":
        data = expand(f"{b}/synthetic_shard/{{shard}}.tsv", shard=shards)
    else:
        data = [f"{b}/laion_metadata/metadata.tsv"] + expand(
            f"{b}/{{stage}}/{{shard}}.tsv",
            stage=["laion_shard_metadata", "laion_images"],
            shard=shards,
        )
    data += [
        f"{b}/{stage}/{s}.tsv"
        for source, stage in (
            ("synthetic", "synthetic_eval_set"),
            ("folders", "ingest_eval_set"),
        )
        for s in eval_sets_from(source)
    ]
    data += expand(f"{b}/select_sets/{{target}}.tsv", target=TARGETS)
    make = "pretrain_clip" if config["clip"]["source"] == "train" else "export_clip"
    models = [f"{b}/{make}/{model}.tsv"]
    # the layer plots are in `all`, so both gradient passes and the layer
    # analysis always run; the masks only for SalUn
    per_target = [
        "clip_gradients/{model}/{target}/forget",
        "clip_gradients/{model}/{target}/retain",
        "layer_analysis/{model}/{target}",
    ]
    if "salun" in METHODS:
        per_target.append("salun_masks/{model}/{target}")
    per_target += [
        f"{stage}/{{model}}/{{target}}/{method}"
        for stage, methods in (
            ("unlearn_clip", METHODS),
            ("evaluate_clip", ["base"] + METHODS),
        )
        for method in methods
    ]
    clip = [
        f"{b}/{p}.tsv".format(model=model, target=t)
        for t in TARGETS
        for p in per_target
    ]
    return data + models + clip


def costs_outputs():
    return expand("results/tables/costs.{ext}", ext=["csv", "md"])


# the tables shown in the report as HTML pages, and their titles
REPORT_TABLES = {
    "clip_unlearning": "Unlearning in CLIP (test split, %)",
    "costs": "Costs per job (wall seconds, peak memory)",
}


def table_views():
    return expand("results/tables/{table}.html", table=REPORT_TABLES)
