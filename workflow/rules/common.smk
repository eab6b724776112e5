# Wiring only: the config's plan (unlearnflow.plan: targets, runs, method
# inputs, outputs, costs, config checks) and the file layout
# (unlearnflow.layout, shared with the library) bound to the names the rules
# use, plus what needs Snakemake itself (checkpoints, rules.X.benchmark, the
# executor). No torch import here: building the DAG must stay fast.
import os
import shutil

from unlearnflow import layout
from unlearnflow.plan import DOMAINS, EVAL_SETS, I2I_SETS, Plan
from unlearnflow.plan import feature_net_input, one_of, source_input
from unlearnflow.provenance import code_fingerprint, source_stamp
from unlearnflow.registry import METHOD_RULES
from unlearnflow.seeds import RUN_PATTERN, method_of, seed_of

P = Plan(config)  # raises on a config that would make a wrong DAG

SHARDS, HELDOUT_SHARDS = P.shards, P.heldout_shards
HELDOUT_FRACTION = P.heldout_fraction
MODEL, T2I, I2I, I2I_MODEL = P.model, P.t2i, P.i2i, P.i2i_model
METHODS, T2I_METHODS, I2I_METHODS = P.methods, P.t2i_methods, P.i2i_methods
UNLEARN_SEEDS, UNLEARN_SEED, CLIP_RUNS = P.unlearn_seeds, P.unlearn_seed, P.clip_runs
CLIP_TARGETS, T2I_TARGETS, TARGETS = P.clip_targets, P.t2i_targets, P.targets
SHARED, SHARED_RETAIN = layout.SHARED, P.shared_retain
MASK_FRACTIONS = P.mask_fractions
JUDGE, JUDGE_DIR = P.judge, layout.judge_dir(P.judge["name"])
ATTACKS = P.attacks
REPORT_TABLES = P.report_tables()
# CPU threads of every torch job (config `threads`; profiles raise it per rule)
THREADS = config["threads"]
# The generator's pretraining, the DAG's longest job, takes two threads
# (1.5x faster per step than one, benchmarks/run.py --only omp_wait);
# Snakemake lowers a job's threads to --cores, and --set-threads overrides.
PRETRAIN_T2I_THREADS = max(THREADS, 2)
# The diffusion chain (training, masks, unlearning, generation, scoring) is
# the longest of the default DAG: scheduled before other ready jobs, it does
# not end the run alone on one core while the other idles.
T2I_PRIORITY = 10
DEVICES = P.devices()


# file layouts the rules call by name (plan values: P.<name>)
def model_files(model=MODEL):
    return layout.clip_files(model)


def i2i_model_files(model=I2I_MODEL):
    return layout.i2i_files(model)


t2i_model_files = layout.t2i_files  # its rules have the {t2i} wildcard


def code_of(name):
    """The `code` param of a rule: the fingerprint of the source its stage
    can run and of the field libraries that source imports
    (unlearnflow.provenance), so an edit of a module reruns exactly the jobs
    that run it. Rules generic over {method} add the method's module."""
    if name in METHOD_RULES:
        return lambda wildcards: code_fingerprint(name, method_of(wildcards.method))
    return code_fingerprint(name)


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


# ---------------------------------------------------------- LAION shards
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


# ---------------------------------------------------------- input functions
def retain_tar(wildcards):
    return layout.target_set(P.retain_owner(wildcards.target), "retain")


def retain_grad(target, model=MODEL):
    return layout.clip_grad(model, P.retain_owner(target), "retain")


def eval_set_files(split, sets=("identities", "objects")):
    """Inputs named like metrics.clip_eval.eval_sets_from expects."""
    return layout.eval_set_files(split, sets)


def style_eval_files(split):
    """The styles set, for a style target only (the others never read it)."""
    return lambda wc: (
        eval_set_files(split, ("styles",))
        if P.target_config(wc.target)["kind"] == "style"
        else {}
    )


def attack_eval_files(wildcards):
    """The test split (scored) and the validation split of the target's
    domain (the soft prompt trains on it)."""
    domain = DOMAINS[P.target_config(wildcards.target)["kind"]]
    test = eval_set_files("test") | style_eval_files("test")(wildcards)
    return test | eval_set_files("val", (domain,))


def method_inputs(wildcards):
    """What a CLIP run reads beyond the model and the sets (its table entry)."""
    return P.method_inputs("clip", method_of(wildcards.method), wildcards.target)


def t2i_method_inputs(wildcards):
    return P.method_inputs("t2i", wildcards.method, wildcards.target)


def i2i_retain_input(wildcards):
    return layout.i2i_set(P.method_params("i2i", wildcards.method)["retain_set"])


def clip_delta_input(wildcards):
    """The delta a CLIP run wrote; none for the base model (evaluation, attacks)."""
    if wildcards.method == "base":
        return {}
    run = layout.clip_run(wildcards.model, wildcards.target, wildcards.method)
    return {"delta": layout.delta(run)}


def clip_eval_inputs(wildcards):
    """The delta and the run's record (its search verdict, for the table); none
    for the base model. ``run_info``: ``info`` is the model's own record."""
    files = clip_delta_input(wildcards)
    if files:
        run = layout.clip_run(wildcards.model, wildcards.target, wildcards.method)
        files["run_info"] = f"{run}/info.json"
    return files


def t2i_delta_inputs(wildcards):
    if wildcards.method == "base":
        return {}
    d = layout.t2i_run(wildcards.t2i, wildcards.target, wildcards.method)
    return {"delta": layout.delta(d), "info": f"{d}/info.json"}


def i2i_delta_input(wildcards):
    if wildcards.method == "base":
        return {}
    return {"delta": layout.delta(layout.i2i_run(wildcards.model, wildcards.method))}


# ---------------------------------------------------------- benchmarks
def benchmark_of(job):
    """The benchmark file of a (rule, wildcards) job: its rule's own pattern."""
    name, wildcards = job
    return getattr(rules, name).benchmark.format(**wildcards)


def heavy_benchmarks(wildcards=None):
    """The benchmark file of every heavy job in the DAG of `all` (the plan's
    heavy_jobs); the cheap local rules (tables, plots) are left out."""
    return [benchmark_of(j) for j in P.heavy_jobs()]


def clip_table_costs():
    """target -> run -> the benchmark files its cost sums."""
    return {
        t: {r: [benchmark_of(j) for j in jobs] for r, jobs in by_run.items()}
        for t, by_run in P.clip_cost_jobs().items()
    }


def clip_table_benchmarks(wildcards):
    return [
        f
        for by_run in clip_table_costs().values()
        for fs in by_run.values()
        for f in fs
    ]


def t2i_cost_files(target, method):
    return [benchmark_of(j) for j in P.cost_jobs("t2i", method, target)]
