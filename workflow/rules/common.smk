# Config lookups shared by the rules, and nothing else: functions only, so
# the files that define rules stay pure wiring. No torch import here, since
# building the DAG must stay fast.
import os
import re
import shutil

from unlearnflow.provenance import code_fingerprint, source_files, source_stamp
from unlearnflow.registry import METHOD_RULES
from unlearnflow.seeds import RUN_PATTERN, method_of, runs, seed_list, seed_of
from unlearnflow.targets import branch_targets, merge_targets

SHARDS = list(config["data"]["shards"])
HELDOUT_SHARDS = list(config["data"]["heldout_shards"])
HELDOUT_FRACTION = config["data"]["heldout_fraction"]
MODEL = config["clip"]["name"]
METHODS = list(config["run_methods"])
# one run per CLIP method and unlearning seed (unlearnflow.seeds); the other
# branches and the attacks take the first seed
UNLEARN_SEEDS = seed_list(config["seeds"]["unlearn"])
UNLEARN_SEED = UNLEARN_SEEDS[0]
CLIP_RUNS = [r for m in METHODS for r in runs(m, UNLEARN_SEEDS)]
# CLIP_TARGETS are unlearned from the CLIP; T2I_TARGETS from the diffusion
# model (SLUG there needs their CLIP gradients too); TARGETS is every target.
# (a branch left out of config `branches` has none)
BRANCHES = config["branches"]
CLIP_TARGETS = branch_targets(config, "clip")
T2I_TARGETS = branch_targets(config, "t2i")
# one id, one concept: an id in both lists with two definitions is an error
TARGETS = merge_targets(config)
EVAL_SETS = ["identities", "objects", "styles"]
SPLITS = ["val", "test"]
# CPU threads of every torch job (config `threads`; profiles raise it per rule)
THREADS = config["threads"]
# one retain set (and so one retain gradient per model) for every target,
# naming none of them; else one per target (data.smk: select_retain)
SHARED_RETAIN = config["selection"]["shared_retain"]
SHARED = "shared"  # the retain set's folder in place of a target id


def retain_owner(target):
    """Whose retain set a target uses: the shared one, or its own."""
    return SHARED if SHARED_RETAIN else target


def retain_tar(wildcards):
    return f"results/data/{retain_owner(wildcards.target)}/retain.tar"


def retain_grad(target, model=MODEL):
    return f"results/grads/{model}/{retain_owner(target)}/retain.safetensors"


def code_of(name):
    """The `code` param of a rule: the fingerprint of the source its stage
    can run and of the field libraries that source imports
    (unlearnflow.provenance), so an edit of a module reruns exactly the jobs
    that run it. Rules generic over {method} add the method's module."""
    if name in METHOD_RULES:
        return lambda wildcards: code_fingerprint(name, method_of(wildcards.method))
    return code_fingerprint(name)


# The rules whose stage runs torch on a configured device, and that device:
# the one table behind every such rule's `device` param and `gpu` resource
# (the local `--resources gpu=1` cap and Slurm's --gpus alike), so a torch
# rule cannot be added without a GPU request. (A stage that gets a `device`
# param without a `gpu` resource breaks the rule <-> stage contract.)
DEVICES = {
    name: config[branch]["device"]
    for branch, names in (
        (
            "clip",
            [
                "pretrain_clip",
                "clip_gradients",
                "unlearn_clip",
                "evaluate_clip",
                "attack_clip",
                "relearn_clip",
            ],
        ),
        (
            "t2i",
            [
                "pretrain_t2i",
                "t2i_salun_masks",
                "unlearn_t2i",
                "generate_t2i",
                "evaluate_t2i",
                "train_judge",
                "import_judge",
                "attack_t2i",
                "relearn_t2i",
            ],
        ),
        ("i2i", ["train_i2i", "unlearn_i2i", "evaluate_i2i"]),
    )
    for name in names
}


def source_input(value, name="source"):
    """A checkpoint the user points at, when it is a local file or folder:
    {name: [its files]} as inputs, so that replacing one reruns the job
    (with the `source_stamp` param, also by an older copy); {} for a name
    (an open_clip tag, a hub id)."""
    files = source_files(value)
    return {name: files} if files else {}


def feature_net_input(spec):
    """The local checkpoint of a feature network spec ({kind, arch, pretrained})."""
    return source_input((spec or {}).get("pretrained"), "feature_source")


def device_of(rule):
    return DEVICES[rule]


def gpu_request(rule):
    """The `gpu` resource of a torch rule, decided when the job is made:
    0 for device cpu; 1 for cuda*; for auto, 1 when the job goes to a
    cluster executor (Slurm gives it the GPU that auto then finds) or the
    machine has NVIDIA's nvidia-smi, else 0. `--set-resources RULE:gpu=N`
    overrides it per rule."""
    device = DEVICES[rule]

    def gpus(wildcards):
        if device == "cpu":
            return 0
        if device.startswith("cuda"):
            return 1
        plugin = workflow.executor_plugin
        remote = plugin is not None and not plugin.common_settings.local_exec
        return int(remote or shutil.which("nvidia-smi") is not None)

    return gpus


def check_targets():
    if SHARED in TARGETS:
        raise ValueError(
            f"config targets: the id {SHARED!r} is reserved (results/data/{SHARED}/ "
            "holds the shared retain set); give the target another id"
        )
    overlap = sorted(set(SHARDS) & set(HELDOUT_SHARDS))
    if overlap:
        raise ValueError(
            f"config data: shards {overlap} are both training and held-out shards"
        )
    if bool(HELDOUT_SHARDS) == (HELDOUT_FRACTION > 0):
        raise ValueError(
            "config data: MIA's non-members need exactly one source: "
            f"data.heldout_shards (shards no model trains on; got {HELDOUT_SHARDS}) "
            f"or data.heldout_fraction (a held-out share of the training rows; "
            f"got {HELDOUT_FRACTION})"
        )
    if config["data"]["source"] != "synthetic":
        return
    syn = config["data"]["synthetic"]
    known = {
        "identity": syn["identities"],
        "object": syn["objects"],
        "style": syn["styles"],
    }
    for t in TARGETS.values():
        names = known[t["kind"]]
        if t["name"].lower() not in {n.lower() for n in names}:
            raise ValueError(
                f"config targets: {t['id']!r} names {t['kind']} {t['name']!r}, "
                f"which the synthetic benchmark does not draw; "
                f"known {t['kind']} names: {names}"
            )


check_targets()

if config["gradients"]["keep"] != "all" and "salun" in METHODS:
    raise ValueError(
        "config: gradients.keep is 'candidates', which stores SLUG's candidate "
        "layers only, but run_methods has salun, whose global saliency mask ranks "
        "every weight: set gradients.keep: all or drop salun from run_methods"
    )


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


_TARGETS_SCANNED = []  # once per DAG build


def shard_rows(shards):
    """The rows files of LAION shards (outputs of the checkpoint)."""
    return [
        checkpoints.laion_shard_metadata.get(shard=s).output.parquet for s in shards
    ]


def checked_shard_metadata(wildcards):
    """The rows of a LAION shard (a checkpoint's output), after checking, the
    first time only, that the shards' captions name every target: a
    misspelt name costs a parquet scan in the DAG, not a download. Once
    the shard's images exist, nothing is checked (adding a target reruns
    no download; its selection says if it matches nothing)."""
    (parquet,) = shard_rows([wildcards.shard])
    if not TARGETS or os.path.exists(f"results/data/laion/{wildcards.shard}.tar"):
        return parquet
    if not _TARGETS_SCANNED:
        from unlearnflow.data.select import scan_metadata

        scan_metadata(
            shard_rows(SHARDS),
            shard_rows(HELDOUT_SHARDS),
            TARGETS,
            config["data"]["laion"]["caption_col"],
        )
        _TARGETS_SCANNED.append(True)
    return parquet


def eval_sets_from(source):
    return [s for s in EVAL_SETS if config["data"]["eval"][s]["source"] == source]


def select_outputs(target="{target}"):
    """select_sets' files: a target's own retain set unless it is shared."""
    d = f"results/data/{target}"
    own = {} if SHARED_RETAIN else {"retain": f"{d}/retain.tar"}
    return (
        {"forget": f"{d}/forget.tar"}
        | own
        | {
            "heldout": f"{d}/heldout.tar",
            "summary": f"{d}/summary.json",
        }
    )


def data_outputs():
    """The sets of every target of the branches that run (and the shared
    retain set); the zero-shot eval sets when the CLIP branch runs (the only
    one scoring on them)."""
    shared = [f"results/data/{SHARED}/retain.tar"] if SHARED_RETAIN and TARGETS else []
    sets = [f for t in sorted(TARGETS) for f in select_outputs(t).values()]
    return (
        sets
        + shared
        + expand(
            "results/data/eval/{evalset}/{name}",
            evalset=EVAL_SETS if CLIP_TARGETS else [],
            name=["val.tar", "test.tar", "classes.json"],
        )
    )


def model_files(model=MODEL):
    d = f"results/models/{model}"
    return {
        "config": f"{d}/open_clip_config.json",
        "weights": f"{d}/open_clip_model.safetensors",
        "info": f"{d}/model.json",
    }


def eval_set_files(split, sets=("identities", "objects")):
    """Inputs named like metrics.clip_eval.eval_sets_from expects."""
    files = {}
    for s in sets:
        files[f"{s}_{split}"] = f"results/data/eval/{s}/{split}.tar"
        files[f"{s}_classes"] = f"results/data/eval/{s}/classes.json"
    return files


def style_eval_files(split):
    """The styles set, for a style target only (the others never read it)."""
    return lambda wc: (
        eval_set_files(split, ("styles",))
        if target_config(wc.target)["kind"] == "style"
        else {}
    )


def method_inputs(wildcards):
    """What each method reads beyond the model and the evaluation sets."""
    t, m, method = wildcards.target, MODEL, method_of(wildcards.method)
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
    if method not in needs:
        raise ValueError(f"unknown method {method!r}; known methods: {sorted(needs)}")
    return needs[method]


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


def clip_delta_input(wildcards):
    """The delta a CLIP run wrote; none for the base model (evaluation, attacks)."""
    if wildcards.method == "base":
        return {}
    d = f"results/unlearn/{wildcards.model}/{wildcards.target}/{wildcards.method}"
    return {"delta": f"{d}/delta.safetensors"}


# the benchmark files whose sum is a method's cost (SLUG: one pass each set,
# the layer analysis and the search; SalUn: the forget pass and the masks)
def method_cost_files(target, run, model=MODEL):
    b = "results/benchmarks"
    own = [f"{b}/unlearn_clip/{model}/{target}/{run}.tsv"]
    method = method_of(run)
    forget_pass = f"{b}/clip_gradients/{model}/{target}/forget.tsv"
    if method == "slug":
        return [
            forget_pass,
            f"{b}/clip_gradients/{model}/{retain_owner(target)}/retain.tsv",
            f"{b}/layer_analysis/{model}/{target}.tsv",
        ] + own
    if method == "salun":
        return [forget_pass, f"{b}/salun_masks/{model}/{target}.tsv"] + own
    return own


def clip_table_costs():
    return {
        t: {r: method_cost_files(t, r) for r in CLIP_RUNS} | {"original": []}
        for t in CLIP_TARGETS
    }


def slug_stop_rule():
    """The caption's sentence on SLUG's stop rule (which forget metric it used)."""
    if "slug" not in METHODS:
        return ""
    p = config["methods"]["slug"]
    target = f"{p['forget_target']:g} %"
    if p["forget_metric"] == "auto":
        return (
            f"SLUG stops at FA5 <= {target} on the validation split within its utility "
            f"budget (the reference), or at FA1 <= {target} where no front layer meets "
            "FA5 within budget (its info.json says which)."
        )
    return (
        f"SLUG stops at {p['forget_metric'].upper()} <= {target} "
        "on the validation split within its utility budget."
    )


def search_plots(model=MODEL):
    """The step-size search traces (SLUG only: the others search no layer)."""
    if "slug" not in METHODS:
        return []
    return expand(
        "results/unlearn/{model}/{target}/slug/search.png",
        model=model,
        target=CLIP_TARGETS,
    )


def clip_outputs():
    if not CLIP_TARGETS:  # the branch is off
        return []
    return (
        expand("results/tables/clip_unlearning.{ext}", ext=["csv", "md", "tex"])
        + ["results/tables/clip_tradeoff.png"]
        + expand(
            "results/layers/{model}/{target}.png", model=MODEL, target=CLIP_TARGETS
        )
        + search_plots()
    )


def heavy_benchmarks(model=MODEL):
    """The benchmark file of every heavy job in the DAG of `all`, from the
    same wildcard values (shards, eval sets, targets, methods, model); the
    cheap local rules (tables, plots) are left out."""
    b = "results/benchmarks"
    shards = SHARDS + (HELDOUT_SHARDS if TARGETS else [])  # held-out: selection only
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
        if CLIP_TARGETS or T2I_TARGETS  # the branches that score on them
    ]
    data += expand(f"{b}/select_sets/{{target}}.tsv", target=TARGETS)
    if SHARED_RETAIN and TARGETS:
        data.append(f"{b}/select_retain/{SHARED}.tsv")
    make = "pretrain_clip" if config["clip"]["source"] == "train" else "export_clip"
    models = [f"{b}/{make}/{model}.tsv"]
    # the layer plots are in `all`, so both gradient passes and the layer
    # analysis always run; the masks only for SalUn
    per_target = [
        "clip_gradients/{model}/{target}/forget",
        "clip_gradients/{model}/{owner}/retain",
        "layer_analysis/{model}/{target}",
    ]
    if "salun" in METHODS:
        per_target.append("salun_masks/{model}/{target}")
    per_target += [
        f"{stage}/{{model}}/{{target}}/{method}"
        for stage, methods in (
            ("unlearn_clip", CLIP_RUNS),
            ("evaluate_clip", ["base"] + CLIP_RUNS),
        )
        for method in methods
    ]
    clip = [
        f"{b}/{p}.tsv".format(model=model, target=t, owner=retain_owner(t))
        for t in CLIP_TARGETS
        for p in per_target
    ]
    clip = list(dict.fromkeys(clip))  # the shared retain pass once
    robust = attack_benchmarks() if robustness_outputs() else []
    return list(
        dict.fromkeys(
            data + models + clip + t2i_benchmarks() + i2i_benchmarks() + robust
        )
    )


def provenance_tables():
    """The provenance file of every results table of the enabled branches."""
    tables = ["clip_unlearning"] if CLIP_TARGETS else []
    if T2I_TARGETS:
        tables.append("t2i_unlearning")
    if I2I_METHODS:
        tables.append("i2i_unlearning")
    if robustness_outputs():
        tables.append("robustness")
    return [f"results/tables/{t}.provenance.json" for t in tables]


def costs_outputs():
    return expand("results/tables/costs.{ext}", ext=["csv", "md"])


# the tables shown in the report as HTML pages, and their titles
REPORT_TABLES = {
    "clip_unlearning": "Unlearning in CLIP (test split, %)",
    "costs": "Costs per job (wall seconds, peak memory)",
}
if not CLIP_TARGETS:
    del REPORT_TABLES["clip_unlearning"]


def table_views():
    return expand("results/tables/{table}.html", table=REPORT_TABLES)


# ---------------------------------------------------------- text-to-image
T2I = config["t2i"]["name"]
# The diffusion chain (training, masks, unlearning, generation, scoring) is
# the longest of the default DAG: scheduled before other ready jobs, it does
# not end the run alone on one core while the other idles.
T2I_PRIORITY = 10
T2I_METHODS = list(config["t2i"]["run_methods"])
if T2I_TARGETS:
    REPORT_TABLES["t2i_unlearning"] = (
        "Text-to-image unlearning (UA / IRA / CRA % by the judge, "
        "FID / KID / IS / CLIP score)"
    )


def t2i_model_files(model="{t2i}"):
    d = f"results/models/{model}"
    return {
        "model": f"{d}/model.json",
        "unet": f"{d}/unet/diffusion_pytorch_model.safetensors",
        "text_encoder": f"{d}/text_encoder/model.safetensors",
    }


def t2i_concepts():
    """Concept names for prompts and classifiers (the synthetic lists by default)."""
    if config["t2i"]["concepts"]:
        return config["t2i"]["concepts"]
    syn = config["data"]["synthetic"]
    return {k: syn[k] for k in ("identities", "objects", "styles")}


def t2i_eval_files(split):
    files = {}
    for s in EVAL_SETS:
        files[f"{s}_{split}"] = f"results/data/eval/{s}/{split}.tar"
        files[f"{s}_classes"] = f"results/data/eval/{s}/classes.json"
    return files


# The judge of generated pictures (metrics/judge.py): train_judge trains the
# default on synthetic renders; import_judge scores a user's classifiers or
# the CLIP. Either writes judge.json with the held-out accuracy.
JUDGE = config["t2i"]["judge"]
JUDGE_DIR = f"results/models/judge/{JUDGE['name']}"
if T2I_TARGETS and JUDGE["kind"] == "train" and config["data"]["source"] != "synthetic":
    raise ValueError(
        "config t2i.judge.kind: train renders the synthetic benchmark's concepts, "
        f"but data.source is {config['data']['source']!r}: give kind checkpoint "
        "(t2i.judge.heads: a classifier per domain, e.g. UnlearnCanvas's) or clip"
    )


def judge_files():
    files = {"judge": f"{JUDGE_DIR}/judge.json"}
    if JUDGE["kind"] == "train":
        files["judge_weights"] = f"{JUDGE_DIR}/judge.safetensors"
    return files


def judge_checkpoints():
    """The user's classifier files (kind checkpoint), as inputs."""
    heads = JUDGE["heads"] if JUDGE["kind"] == "checkpoint" else {}
    return {"judge_source": [h["checkpoint"] for h in heads.values()]} if heads else {}


def t2i_method_inputs(wildcards):
    t = wildcards.target
    needs = {
        "slug": {
            "grad_forget": f"results/grads/{MODEL}/{t}/forget.safetensors",
            "layers": f"results/layers/{MODEL}/{t}.parquet",
        },
        "salun": {
            "mask": mask_path_t2i(
                t, t2i_method_params("salun").get("mask_fraction", 0.5)
            )
        },
    }
    return needs.get(wildcards.method, {})


def mask_path_t2i(target, fraction, model=T2I):
    return f"results/masks/{model}/{target}/unet_salun_{float(fraction):g}.safetensors"


def t2i_method_params(method):
    return dict(config["t2i"]["methods"].get(method) or {})


def t2i_delta_inputs(wildcards):
    if wildcards.method == "base":
        return {}
    d = f"results/unlearn_t2i/{wildcards.t2i}/{wildcards.target}/{wildcards.method}"
    return {"delta": f"{d}/delta.safetensors", "info": f"{d}/info.json"}


def t2i_outputs():
    if not T2I_TARGETS:
        return []
    grids = expand(
        "results/generate/{t2i}/{target}/{method}/{pset}_grid.png",
        t2i=T2I,
        target=T2I_TARGETS,
        method=["base"] + T2I_METHODS,
        pset=["forget", "retain"],
    )
    grids += expand(
        "results/generate/{t2i}/{target}/compare.png", t2i=T2I, target=T2I_TARGETS
    )
    return (
        expand("results/tables/t2i_unlearning.{ext}", ext=["csv", "md", "tex"]) + grids
    )


def t2i_cost_files(target, method):
    b = "results/benchmarks"
    own = [f"{b}/unlearn_t2i/{T2I}/{target}/{method}.tsv"]
    if method == "slug":
        return [
            f"{b}/clip_gradients/{MODEL}/{target}/forget.tsv",
            f"{b}/clip_gradients/{MODEL}/{retain_owner(target)}/retain.tsv",
            f"{b}/layer_analysis/{MODEL}/{target}.tsv",
        ] + own
    if method == "salun":
        return [f"{b}/t2i_salun_masks/{T2I}/{target}.tsv"] + own
    return own


def t2i_benchmarks():
    """The heavy text-to-image jobs: model, judge, and per target what each
    method's cost sums (t2i_cost_files), generation and scoring."""
    if not T2I_TARGETS:
        return []
    b = "results/benchmarks"
    make = "pretrain_t2i" if config["t2i"]["source"] == "train" else "export_t2i"
    judge = "train_judge" if JUDGE["kind"] == "train" else "import_judge"
    files = [f"{b}/{make}/{T2I}.tsv", f"{b}/{judge}/{JUDGE['name']}.tsv"]
    for t in T2I_TARGETS:
        files += [f for m in T2I_METHODS for f in t2i_cost_files(t, m)]
        files += [
            f"{b}/{stage}/{T2I}/{t}/{m}.tsv"
            for stage in ("generate_t2i", "evaluate_t2i")
            for m in ["base"] + T2I_METHODS
        ]
    return files


# ---------------------------------------------------------- image-to-image
I2I = config["i2i"]
I2I_MODEL = I2I["name"]
I2I_METHODS = list(I2I["run_methods"]) if "i2i" in BRANCHES else []
I2I_SETS = ["forget", "retain", "proxy", "test_forget", "test_retain"]


def check_i2i():
    if not I2I_METHODS:  # the branch is off (nothing of it is in `all`)
        return
    objects = config["data"]["synthetic"]["objects"]
    forget, retain = I2I["forget_classes"], I2I["retain_classes"]
    for key, classes in (("forget_classes", forget), ("retain_classes", retain)):
        unknown = [c for c in classes if c not in objects]
        if unknown:
            raise ValueError(
                f"config i2i.{key}: {unknown} are not among data.synthetic.objects {objects}"
            )
    both = sorted(set(forget) & set(retain))
    if both:
        raise ValueError(
            f"config i2i: {both} in both forget_classes and retain_classes"
        )
    for m in I2I_METHODS:
        if i2i_method_params(m).get("forget_alpha", 1) == 0:
            raise ValueError(
                f"config i2i.methods.{m}.forget_alpha is 0, which disables forgetting; "
                "set it > 0 (the paper's example: 0.2)"
            )


def i2i_model_files(model=I2I_MODEL):
    d = f"results/models/{model}"
    return {
        "config": f"{d}/i2i_config.json",
        "weights": f"{d}/i2i_model.safetensors",
        "info": f"{d}/i2i_model.json",
    }


def i2i_method_params(method):
    """A method's params; li_proxy's retain set is the proxy pool by default."""
    p = dict(I2I["methods"].get(method) or {})
    p.setdefault("retain_set", "proxy" if method == "li_proxy" else "retain")
    return p


check_i2i()


if I2I_METHODS:
    REPORT_TABLES["i2i_unlearning"] = (
        "Image-to-image unlearning (FID / IS / CLIP per split)"
    )


def i2i_retain_input(wildcards):
    return f"results/data/i2i/{i2i_method_params(wildcards.method)['retain_set']}.tar"


def i2i_delta_input(wildcards):
    if wildcards.method == "base":
        return {}
    d = f"results/unlearn_i2i/{wildcards.model}/{wildcards.method}"
    return {"delta": f"{d}/delta.safetensors"}


def i2i_feature_inputs():
    """The local CLIP folder that scores the outputs (none for open_clip)."""
    f = I2I["eval"]["features"]
    if f["kind"] != "clip":
        return {}
    d = f["dir"] or f"results/models/{MODEL}"
    return {
        "clip_config": f"{d}/open_clip_config.json",
        "clip_weights": f"{d}/open_clip_model.safetensors",
    }


def lpips_input():
    """The local LPIPS backbone file, when LPIPS is on and one is given."""
    lp = I2I["eval"]["lpips"]
    return (
        {"lpips_backbone": lp["backbone"]} if lp["enabled"] and lp["backbone"] else {}
    )


def i2i_caption():
    lp = I2I["eval"]["lpips"]
    lpips = (
        f"LPIPS ({lp['net']} backbone)"
        if lp["enabled"]
        else "LPIPS is off (i2i.eval.lpips.enabled: its backbone weights need a download or a local file), so its columns are empty"
    )
    return (
        "Image-to-image unlearning: FID, IS and CLIP cosine of the outputs per split (forget, retain) "
        f"and task, SSIM / PSNR (dB) of each output against its ground truth, {lpips}; and each method's seconds."
    )


def i2i_tsne_method():
    m = I2I["eval"]["tsne_method"]
    return m if m in I2I_METHODS or not I2I_METHODS else I2I_METHODS[0]


def i2i_outputs():
    """The branch's final outputs; none when i2i.run_methods is empty."""
    if not I2I_METHODS:
        return []
    return expand("results/tables/i2i_unlearning.{ext}", ext=["csv", "md", "tex"]) + [
        "results/tables/i2i_fid_is.csv",
        "results/tables/i2i_clip_cosine.csv",
        "results/tables/i2i_tsne.png",
    ]


def i2i_benchmarks():
    """The benchmark file of every heavy job of the image-to-image branch."""
    if not I2I_METHODS:
        return []
    b = "results/benchmarks"
    make = "train_i2i" if I2I["source"] == "train" else "import_i2i"
    return (
        [f"{b}/i2i_images/i2i_images.tsv", f"{b}/i2i_sets/i2i_sets.tsv"]
        + [f"{b}/{make}/{I2I_MODEL}.tsv"]
        + [f"{b}/unlearn_i2i/{I2I_MODEL}/{m}.tsv" for m in I2I_METHODS]
        + [f"{b}/evaluate_i2i/{I2I_MODEL}/{m}.tsv" for m in ["base"] + I2I_METHODS]
    )


# ---------------------------------------------------------- robustness
ATTACKS = config["attacks"]


def clip_attack_params():
    return {k: ATTACKS["clip"][k] for k in ("paraphrase", "soft_prompt")}


def t2i_attack_params():
    return {k: ATTACKS["t2i"][k] for k in ("paraphrase", "prompt_search")}


def attack_eval_files(wildcards):
    """The test split (scored) and the validation split of the target's
    domain (the soft prompt trains on it)."""
    kind = target_config(wildcards.target)["kind"]
    domain = {"identity": "identities", "object": "objects", "style": "styles"}[kind]
    test = eval_set_files("test") | style_eval_files("test")(wildcards)
    return test | eval_set_files("val", (domain,))


def attack_stages():
    """(rule, output path pattern) of every attack stage that runs."""
    wanted = []
    for family, targets in (("clip", CLIP_TARGETS), ("t2i", T2I_TARGETS)):
        spec = ATTACKS[family]
        if not targets:
            continue
        if any(v["enabled"] for k, v in spec.items() if k != "relearn"):
            wanted.append(
                (
                    f"attack_{family}",
                    f"results/attacks/{family}/{{model}}/{{target}}/{{method}}.parquet",
                )
            )
        if spec["relearn"]["enabled"]:
            wanted.append(
                (
                    f"relearn_{family}",
                    f"results/attacks/{family}/{{model}}/{{target}}/{{method}}.relearn.parquet",
                )
            )
    return wanted


def _attack_expand(rule_name, pattern):
    clip = rule_name.endswith("clip")
    return expand(
        pattern,
        model=MODEL if clip else T2I,
        target=CLIP_TARGETS if clip else T2I_TARGETS,
        method=["base"] + (METHODS if clip else T2I_METHODS),
    )


def attack_files():
    return [f for r, pattern in attack_stages() for f in _attack_expand(r, pattern)]


def attack_benchmarks():
    b = "results/benchmarks/{r}/{{model}}/{{target}}/{{method}}.tsv"
    return [f for r, _ in attack_stages() for f in _attack_expand(r, b.format(r=r))]


def robustness_outputs():
    if not (ATTACKS["in_all"] and attack_stages()):
        return []
    t2i_grids = (
        expand(
            "results/attacks/t2i/{t2i}/{target}/{method}.grid.png",
            t2i=T2I,
            target=T2I_TARGETS,
            method=["base"] + T2I_METHODS,
        )
        if any(r == "attack_t2i" for r, _ in attack_stages())
        else []
    )
    return (
        expand("results/tables/robustness.{ext}", ext=["csv", "md", "tex"]) + t2i_grids
    )


def robustness_caption():
    seed = config["seeds"]["attack"]
    return (
        "Robustness of unlearning: each attack's metric before (the unattacked model, as in "
        "the results tables) and after the attack, its budget and wall seconds (attack seed "
        f"{seed}). CLIP: FA@1 (%) on the target's test images; paraphrase = the best of the "
        "variants, soft_prompt = the name's token embeddings optimised on the frozen model, "
        "relearn = fine-tuning on a few forget pairs. Text-to-image: ASR (% of forget "
        "generations the judge labels the target); prompt_search = UnlearnDiffAtk-style "
        "tokens prepended (post-attack ASR counts the pre-attack successes)."
    )


if robustness_outputs():
    REPORT_TABLES["robustness"] = (
        "Robustness: attacks on every method (FA@1 / ASR %, before and after)"
    )
