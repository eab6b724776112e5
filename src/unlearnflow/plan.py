"""What the workflow runs for a config: targets, runs, inputs, outputs, costs.

:class:`Plan` turns a validated config into the values the rules are wired
from (workflow/rules/common.smk binds them): the targets of each branch,
the runs of every method and seed, each method's extra inputs and the jobs
its cost sums (from :mod:`unlearnflow.method_table`), the final outputs of
each branch, the heavy jobs of the default target, and the tables' captions.
Config errors that make the DAG wrong are raised here, at DAG build, naming
the key. Plain Python (no torch, no pandas, no Snakemake), so it is unit
tested without building a DAG.

Heavy jobs are (rule, wildcards) pairs; common.smk turns each into its
benchmark file with ``rules.<rule>.benchmark``, so no benchmark path is
written twice.
"""

from __future__ import annotations

import itertools
import re

from . import layout
from . import method_table as mt
from .seeds import method_of, runs, seed_list
from .io import UnlearnflowError
from .targets import DOMAINS, branch_targets, check_split, merge_targets  # noqa: F401  (DOMAINS: for the rules)

EVAL_SETS = ["identities", "objects", "styles"]
I2I_SETS = ["forget", "retain", "proxy", "test_forget", "test_retain"]
# the rules whose stage runs torch on a configured device, by branch (the
# `device` param and `gpu` resource of each: common.smk)
TORCH_RULES = {
    "clip": ["pretrain_clip", "clip_gradients", "unlearn_clip", "evaluate_clip", "attack_clip", "relearn_clip"],
    "t2i": [
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
    "i2i": ["train_i2i", "unlearn_i2i", "evaluate_i2i"],
}
REPORT_TITLES = {
    "clip_unlearning": "Unlearning in CLIP (test split, %)",
    "costs": "Costs per job (wall seconds, peak memory)",
    "t2i_unlearning": "Text-to-image unlearning (UA / IRA / CRA % by the judge, FID / KID / IS / CLIP score)",
    "i2i_unlearning": "Image-to-image unlearning (FID / IS / CLIP per split)",
    "robustness": "Robustness: attacks on every method (FA@1 / ASR %, before and after)",
}


def one_of(values) -> str:
    """A wildcard constraint matching exactly these values (or nothing)."""
    return "|".join(re.escape(v) for v in values) or "(?!x)x"


def source_input(value, name="source") -> dict:
    """A checkpoint the user points at, when it is a local file or folder:
    {name: [its files]} as inputs, so that replacing one reruns the job
    (with the `source_stamp` param, also by an older copy); {} for a name
    (an open_clip tag, a hub id)."""
    from .provenance import source_files

    files = source_files(value)
    return {name: files} if files else {}


def feature_net_input(spec) -> dict:
    """The local checkpoint of a feature network spec ({kind, arch, pretrained})."""
    return source_input((spec or {}).get("pretrained"), "feature_source")


def product(**values) -> list[dict]:
    """Every combination of the given wildcard values, as dicts (like expand)."""
    keys = list(values)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(values[k] for k in keys))]


class Plan:
    def __init__(self, config: dict):
        self.config = c = config
        self.shards = list(c["data"]["shards"])
        self.heldout_shards = list(c["data"]["heldout_shards"])
        self.heldout_fraction = c["data"]["heldout_fraction"]
        self.model = c["clip"]["name"]
        self.t2i = c["t2i"]["name"]
        self.i2i = c["i2i"]
        self.i2i_model = self.i2i["name"]
        self.branches = c["branches"]
        self.methods = mt.check_run_methods("clip", c["run_methods"], "run_methods")
        self.t2i_methods = mt.check_run_methods("t2i", c["t2i"]["run_methods"], "t2i.run_methods")
        i2i = mt.check_run_methods("i2i", self.i2i["run_methods"], "i2i.run_methods")
        self.i2i_methods = i2i if "i2i" in self.branches else []
        # one run per CLIP method and unlearning seed (unlearnflow.seeds); the
        # other branches and the attacks take the first seed
        self.unlearn_seeds = seed_list(c["seeds"]["unlearn"])
        self.unlearn_seed = self.unlearn_seeds[0]
        self.clip_runs = [r for m in self.methods for r in runs(m, self.unlearn_seeds)]
        # CLIP_TARGETS are unlearned from the CLIP, T2I_TARGETS from the
        # diffusion model (SLUG there needs their CLIP gradients too); one id,
        # one concept: an id in both lists with two definitions is an error
        self.clip_targets = branch_targets(c, "clip")
        self.t2i_targets = branch_targets(c, "t2i")
        self.targets = merge_targets(c)
        # one retain set (and retain gradient) for every target, or one each
        self.shared_retain = c["selection"]["shared_retain"]
        self.mask_fractions = [float(f) for f in c["masks"]["fractions"]]
        self.judge = c["t2i"]["judge"]
        self.attacks = c["attacks"]
        # every configured method's params checked (a name or key the table
        # does not know is an error, also for a method that does not run now)
        for family, given, where in (
            ("clip", c["methods"], "methods"),
            ("t2i", c["t2i"]["methods"], "t2i.methods"),
            ("i2i", self.i2i["methods"], "i2i.methods"),
        ):
            mt.check_run_methods(family, list(given or {}), where)
            for m, params in (given or {}).items():
                mt.merge_params(family, m, params, f"{where}.{m}")
        # every method's params: its table defaults, then the config's
        self.params = {
            "clip": {m: self._merged("clip", m, c["methods"].get(m)) for m in self.methods},
            "t2i": {m: self._merged("t2i", m, c["t2i"]["methods"].get(m)) for m in self.t2i_methods},
            "i2i": {m: self._merged("i2i", m, self.i2i["methods"].get(m)) for m in self.i2i_methods},
        }
        self.check()

    # ------------------------------------------------------------ checks
    def check(self) -> None:
        c = self.config
        if layout.SHARED in self.targets:
            raise ValueError(
                f"config targets: the id {layout.SHARED!r} is reserved (results/data/{layout.SHARED}/ "
                "holds the shared retain set); give the target another id"
            )
        overlap = sorted(set(self.shards) & set(self.heldout_shards))
        if overlap:
            raise ValueError(f"config data: shards {overlap} are both training and held-out shards")
        if bool(self.heldout_shards) == (self.heldout_fraction > 0):
            raise ValueError(
                "config data: MIA's non-members need exactly one source: "
                f"data.heldout_shards (shards no model trains on; got {self.heldout_shards}) "
                f"or data.heldout_fraction (a held-out share of the training rows; "
                f"got {self.heldout_fraction})"
            )
        if c["data"]["source"] == "synthetic":
            syn = c["data"]["synthetic"]
            known = {"identity": syn["identities"], "object": syn["objects"], "style": syn["styles"]}
            for t in self.targets.values():
                names = known[t["kind"]]
                if t["name"].lower() not in {n.lower() for n in names}:
                    raise ValueError(
                        f"config targets: {t['id']!r} names {t['kind']} {t['name']!r}, "
                        f"which the synthetic benchmark does not draw; "
                        f"known {t['kind']} names: {names}"
                    )
        if c["gradients"]["keep"] != "all" and any("mask" in mt.get("clip", m).needs for m in self.methods):
            raise ValueError(
                "config: gradients.keep is 'candidates', which stores SLUG's candidate "
                "layers only, but run_methods has salun, whose global saliency mask ranks "
                "every weight: set gradients.keep: all or drop salun from run_methods"
            )
        for m in self.methods:
            if "mask" in mt.get("clip", m).needs:
                self.clip_mask_fraction(m)  # one of masks.fractions
        if self.t2i_targets and self.judge["kind"] == "train" and c["data"]["source"] != "synthetic":
            raise ValueError(
                "config t2i.judge.kind: train renders the synthetic benchmark's concepts, "
                f"but data.source is {c['data']['source']!r}: give kind checkpoint "
                "(t2i.judge.heads: a classifier per domain, e.g. UnlearnCanvas's) or clip"
            )
        self.check_i2i()

    def check_i2i(self) -> None:
        if not self.i2i_methods:  # the branch is off (nothing of it is in `all`)
            return
        try:
            check_split(self.config["data"]["synthetic"]["objects"], self.i2i["forget_classes"], self.i2i["retain_classes"])
        except UnlearnflowError as e:
            raise ValueError(f"config {e} (data.synthetic.objects)") from None
        for m in self.i2i_methods:
            if self.params["i2i"][m]["forget_alpha"] == 0:
                raise ValueError(
                    f"config i2i.methods.{m}.forget_alpha is 0, which disables forgetting; "
                    "set it > 0 (the paper's example: 0.2)"
                )

    def target_config(self, target_id: str) -> dict:
        if target_id not in self.targets:
            raise ValueError(f"unknown target {target_id!r}; known targets: {sorted(self.targets)}")
        return self.targets[target_id]

    # ------------------------------------------------------------ devices
    def devices(self) -> dict:
        """rule -> configured device of every torch rule."""
        return {r: self.config[branch]["device"] for branch, names in TORCH_RULES.items() for r in names}

    # ------------------------------------------------------------ data
    def retain_owner(self, target: str) -> str:
        """Whose retain set a target uses: the shared one, or its own."""
        return layout.SHARED if self.shared_retain else target

    def eval_sets_from(self, source: str) -> list:
        return [s for s in EVAL_SETS if self.config["data"]["eval"][s]["source"] == source]

    def synthetic_concepts(self) -> dict:
        """What every synthetic picture depends on (its signatures)."""
        syn = self.config["data"]["synthetic"]
        return {
            "seed": self.config["seeds"]["data"],
            "image_size": syn["image_size"],
            "identities": syn["identities"],
            "objects": syn["objects"],
            "styles": syn["styles"],
            "jpeg_quality": syn["jpeg_quality"],
        }

    def synthetic_shard_spec(self) -> dict:
        syn = self.config["data"]["synthetic"]
        return self.synthetic_concepts() | {
            "samples_per_shard": syn["samples_per_shard"],
            "mix": syn["mix"],
            "failure_rate": syn["failure_rate"],
        }

    def select_outputs(self, target="{target}") -> dict:
        """select_sets' files: a target's own retain set unless it is shared."""
        own = {} if self.shared_retain else {"retain": layout.target_set(target, "retain")}
        return (
            {"forget": layout.target_set(target, "forget")}
            | own
            | {"heldout": layout.target_set(target, "heldout"), "summary": f"results/data/{target}/summary.json"}
        )

    def data_outputs(self) -> list:
        """The sets of every target of the branches that run (and the shared
        retain set); the zero-shot eval sets when the CLIP branch runs (the
        only one scoring on them)."""
        shared = [layout.target_set(layout.SHARED, "retain")] if self.shared_retain and self.targets else []
        sets = [f for t in sorted(self.targets) for f in self.select_outputs(t).values()]
        evals = [
            f
            for s in (EVAL_SETS if self.clip_targets else [])
            for f in (layout.eval_set(s, "val"), layout.eval_set(s, "test"), layout.eval_classes(s))
        ]
        return sets + shared + evals

    # ------------------------------------------------------------ methods
    def method_params(self, family: str, method: str) -> dict:
        """A method's params: the run methods' as merged at start, any other
        table method's (a path asked for by name) merged now."""
        if method in self.params[family]:
            return dict(self.params[family][method])
        given = {"clip": self.config["methods"], "t2i": self.config["t2i"]["methods"], "i2i": self.i2i["methods"]}
        return self._merged(family, method, (given[family] or {}).get(method))

    def _merged(self, family: str, method: str, given: dict | None) -> dict:
        """A method's params: its table defaults, then the config's. A text-to-
        image search sampler left null is the evaluation's
        (``t2i.sampling.sampler``), stated in the job's params so that changing
        the evaluation's sampler reruns the search."""
        where = {"clip": "methods", "t2i": "t2i.methods", "i2i": "i2i.methods"}[family]
        p = mt.merge_params(family, method, given, f"{where}.{method}")
        if family == "t2i" and "search_sampler" in p and p["search_sampler"] is None:
            # absent, the evaluation samples with DDIM (models.diffusion.SAMPLERS[0];
            # plan stays free of torch)
            p["search_sampler"] = self.config["t2i"]["sampling"].get("sampler", "ddim")
        return p

    def clip_mask_fraction(self, method: str = "salun") -> float:
        f = float(self.method_params("clip", method)["mask_fraction"])
        if f not in self.mask_fractions:
            raise ValueError(f"methods.{method}.mask_fraction {f} is not among masks.fractions {self.mask_fractions}")
        return f

    def method_inputs(self, family: str, method: str, target: str) -> dict:
        """The files a method reads beyond the model and the sets (its table
        entry's ``needs``); {} for the base model."""
        if method == "base":
            return {}
        files = {}
        for need in mt.get(family, method).needs:
            if need == "grad_forget":
                files[need] = layout.clip_grad(self.model, target, "forget")
            elif need == "layers":
                files[need] = layout.layer_table(self.model, target)
            elif need == "mask" and family == "clip":
                files[need] = layout.clip_mask(self.model, target, self.clip_mask_fraction(method))
            elif need == "mask" and family == "t2i":
                files[need] = layout.t2i_mask(self.t2i, target, self.method_params("t2i", method)["mask_fraction"])
            elif need == "judge" and family == "t2i":
                if self.method_params("t2i", method).get("criterion") == "judge":  # SLUG's search by the judge
                    files.update(self.judge_files())
            else:
                raise ValueError(f"method {family}/{method} needs {need!r}, which the {family} branch does not make")
        return files

    def cost_jobs(self, family: str, run: str, target: str | None = None) -> list:
        """(rule, wildcards) of the jobs a run's cost sums: what its table
        entry lists, then its own unlearning job."""
        method = method_of(run)
        jobs = []
        for item in mt.get(family, method).cost:
            rule, _, which = item.partition(":")
            if rule == "clip_gradients":
                owner = target if which == "forget" else self.retain_owner(target)
                jobs.append((rule, {"model": self.model, "target": owner, "set": which}))
            elif rule in ("layer_analysis", "salun_masks"):
                jobs.append((rule, {"model": self.model, "target": target}))
            elif rule == "t2i_salun_masks":
                jobs.append((rule, {"t2i": self.t2i, "target": target}))
            else:
                raise ValueError(f"method {family}/{method}: no wildcards known for cost rule {rule!r}")
        own = {
            "clip": ("unlearn_clip", {"model": self.model, "target": target, "method": run}),
            "t2i": ("unlearn_t2i", {"t2i": self.t2i, "target": target, "method": run}),
            "i2i": ("unlearn_i2i", {"model": self.i2i_model, "method": run}),
        }[family]
        return jobs + [own]

    def needs_any(self, family: str, need: str) -> bool:
        names = {"clip": self.methods, "t2i": self.t2i_methods, "i2i": self.i2i_methods}[family]
        return any(need in mt.get(family, m).needs for m in names)

    # ------------------------------------------------------------ captions
    def slug_stop_rule(self) -> str:
        """The caption's sentence on SLUG's stop rule (which forget metric it used)."""
        if "slug" not in self.methods:
            return ""
        p = self.params["clip"]["slug"]
        target = f"{p['forget_target']:g} %"
        if p["forget_metric"] == "auto":
            return (
                f"SLUG stops at FA5 <= {target} on the validation split within its utility "
                f"budget (the reference), or at FA1 <= {target} where no front layer meets "
                "FA5 within budget (its info.json says which)."
            )
        return f"SLUG stops at {p['forget_metric'].upper()} <= {target} on the validation split within its utility budget."

    def i2i_caption(self) -> str:
        lp = self.i2i["eval"]["lpips"]
        lpips = (
            f"LPIPS ({lp['net']} backbone)"
            if lp["enabled"]
            else "LPIPS is off (i2i.eval.lpips.enabled: its backbone weights need a download or a local file), so its columns are empty"
        )
        return (
            "Image-to-image unlearning: FID, IS and CLIP cosine of the outputs per split (forget, retain) "
            f"and task, SSIM / PSNR (dB) of each output against its ground truth, {lpips}; and each method's seconds."
        )

    def robustness_caption(self) -> str:
        seed = self.config["seeds"]["attack"]
        return (
            "Robustness of unlearning: each attack's metric before (the unattacked model, as in "
            "the results tables) and after the attack, its budget and wall seconds (attack seed "
            f"{seed}). CLIP: FA@1 (%) on the target's test images; paraphrase = the best of the "
            "variants, soft_prompt = the name's token embeddings optimised on the frozen model, "
            "relearn = fine-tuning on a few forget pairs. Text-to-image: ASR (% of forget "
            "generations the judge labels the target); prompt_search = UnlearnDiffAtk-style "
            "tokens prepended (post-attack ASR counts the pre-attack successes)."
        )

    # ------------------------------------------------------------ t2i
    def t2i_concepts(self) -> dict:
        """Concept names for prompts and classifiers (the synthetic lists by default)."""
        if self.config["t2i"]["concepts"]:
            return self.config["t2i"]["concepts"]
        syn = self.config["data"]["synthetic"]
        return {k: syn[k] for k in EVAL_SETS}

    def judge_files(self) -> dict:
        d = layout.judge_dir(self.judge["name"])
        files = {"judge": f"{d}/{layout.JUDGE_INFO}"}
        if self.judge["kind"] == "train":
            files["judge_weights"] = f"{d}/{layout.JUDGE_WEIGHTS}"
        return files

    def judge_checkpoints(self) -> dict:
        """The user's classifier files (kind checkpoint), as inputs."""
        heads = self.judge["heads"] if self.judge["kind"] == "checkpoint" else {}
        return {"judge_source": [h["checkpoint"] for h in heads.values()]} if heads else {}

    # ------------------------------------------------------------ i2i
    def i2i_tsne_method(self) -> str:
        m = self.i2i["eval"]["tsne_method"]
        return m if m in self.i2i_methods or not self.i2i_methods else self.i2i_methods[0]

    def i2i_feature_inputs(self) -> dict:
        """The local CLIP folder that scores the outputs (none for open_clip)."""
        f = self.i2i["eval"]["features"]
        if f["kind"] != "clip":
            return {}
        files = layout.clip_files(self.model) if not f["dir"] else {
            "config": f"{f['dir']}/{layout.CLIP_CONFIG}",
            "weights": f"{f['dir']}/{layout.CLIP_WEIGHTS}",
        }
        return {"clip_config": files["config"], "clip_weights": files["weights"]}

    def lpips_input(self) -> dict:
        """The local LPIPS backbone file, when LPIPS is on and one is given."""
        lp = self.i2i["eval"]["lpips"]
        return {"lpips_backbone": lp["backbone"]} if lp["enabled"] and lp["backbone"] else {}

    # ------------------------------------------------------------ attacks
    def attack_params(self, family: str) -> dict:
        keys = {"clip": ("paraphrase", "soft_prompt"), "t2i": ("paraphrase", "prompt_search")}[family]
        return {k: self.attacks[family][k] for k in keys}

    def attack_rules(self) -> list:
        """The attack rules that run (their family's branch has targets)."""
        wanted = []
        for family, targets in (("clip", self.clip_targets), ("t2i", self.t2i_targets)):
            spec = self.attacks[family]
            if not targets:
                continue
            if any(v["enabled"] for k, v in spec.items() if k != "relearn"):
                wanted.append(f"attack_{family}")
            if spec["relearn"]["enabled"]:
                wanted.append(f"relearn_{family}")
        return wanted

    def attack_jobs(self, rule: str) -> list:
        if rule.endswith("clip"):
            return product(model=[self.model], target=self.clip_targets, method=["base"] + self.methods)
        return product(t2i=[self.t2i], target=self.t2i_targets, method=["base"] + self.t2i_methods)

    def robustness_on(self) -> bool:
        return bool(self.attacks["in_all"] and self.attack_rules())

    # ------------------------------------------------------------ outputs
    def clip_outputs(self) -> list:
        if not self.clip_targets:  # the branch is off
            return []
        search = (
            [f"results/unlearn/{self.model}/{t}/slug/search.png" for t in self.clip_targets]
            if "slug" in self.methods
            else []
        )
        return (
            layout.tables("clip_unlearning")
            + [layout.table("clip_tradeoff", "png")]
            + [f"results/layers/{self.model}/{t}.png" for t in self.clip_targets]
            + search
        )

    def t2i_outputs(self) -> list:
        if not self.t2i_targets:
            return []
        grids = [
            f"results/generate/{self.t2i}/{t}/{m}/{pset}_grid.png"
            for t in self.t2i_targets
            for m in ["base"] + self.t2i_methods
            for pset in ("forget", "retain")
        ]
        grids += [f"results/generate/{self.t2i}/{t}/compare.png" for t in self.t2i_targets]
        return layout.tables("t2i_unlearning") + grids

    def i2i_outputs(self) -> list:
        """The branch's final outputs; none when i2i.run_methods is empty."""
        if not self.i2i_methods:
            return []
        return layout.tables("i2i_unlearning") + [
            layout.table("i2i_fid_is", "csv"),
            layout.table("i2i_clip_cosine", "csv"),
            layout.table("i2i_tsne", "png"),
        ]

    def attack_files(self) -> list:
        pattern = {
            "attack_clip": "results/attacks/clip/{model}/{target}/{method}.parquet",
            "relearn_clip": "results/attacks/clip/{model}/{target}/{method}.relearn.parquet",
            "attack_t2i": "results/attacks/t2i/{t2i}/{target}/{method}.parquet",
            "relearn_t2i": "results/attacks/t2i/{t2i}/{target}/{method}.relearn.parquet",
        }
        return [pattern[r].format(**w) for r in self.attack_rules() for w in self.attack_jobs(r)]

    def robustness_outputs(self) -> list:
        if not self.robustness_on():
            return []
        grids = (
            [
                f"results/attacks/t2i/{self.t2i}/{t}/{m}.grid.png"
                for t in self.t2i_targets
                for m in ["base"] + self.t2i_methods
            ]
            if "attack_t2i" in self.attack_rules()
            else []
        )
        return layout.tables("robustness") + grids

    def costs_outputs(self) -> list:
        return layout.tables("costs", ("csv", "md"))

    def table_views(self) -> list:
        return [layout.table(t, "html") for t in self.report_tables()]

    def report_tables(self) -> dict:
        """The tables shown in the report as HTML pages, and their titles."""
        names = (["clip_unlearning"] if self.clip_targets else []) + ["costs"]
        names += ["t2i_unlearning"] if self.t2i_targets else []
        names += ["i2i_unlearning"] if self.i2i_methods else []
        names += ["robustness"] if self.robustness_on() else []
        return {n: REPORT_TITLES[n] for n in names}

    def provenance_tables(self) -> list:
        """The provenance file of every results table of the enabled branches."""
        names = [n for n in self.report_tables() if n != "costs"]
        return [layout.table(n, "provenance.json") for n in names]

    # ------------------------------------------------------------ costs
    def clip_cost_jobs(self) -> dict:
        """target -> run -> the (rule, wildcards) its cost sums ("original": none)."""
        return {
            t: {r: self.cost_jobs("clip", r, t) for r in self.clip_runs} | {"original": []}
            for t in self.clip_targets
        }

    def t2i_cost_jobs(self) -> dict:
        return {t: {m: self.cost_jobs("t2i", m, t) for m in self.t2i_methods} for t in self.t2i_targets}

    def heavy_jobs(self) -> list:
        """(rule, wildcards) of every heavy job in the DAG of `all`, from the
        same values that build its outputs; the cheap local rules (tables,
        plots) are left out. tests/test_workflow.py checks it against the
        benchmark files a run leaves."""
        c = self.config
        jobs = []
        shards = self.shards + (self.heldout_shards if self.targets else [])  # held-out: selection only
        if c["data"]["source"] == "synthetic":
            jobs += [("synthetic_shard", {"shard": s}) for s in shards]
        else:
            jobs.append(("laion_metadata", {}))
            jobs += [(r, {"shard": s}) for r in ("laion_shard_metadata", "laion_images") for s in shards]
        if self.clip_targets or self.t2i_targets:  # the branches that score on the eval sets
            for source, rule in (("synthetic", "synthetic_eval_set"), ("folders", "ingest_eval_set")):
                jobs += [(rule, {"evalset": s}) for s in self.eval_sets_from(source)]
        jobs += [("select_sets", {"target": t}) for t in self.targets]
        if self.shared_retain and self.targets:
            jobs.append(("select_retain", {}))
        make = "pretrain_clip" if c["clip"]["source"] == "train" else "export_clip"
        jobs.append((make, {"model": self.model}))
        for t in self.clip_targets:
            # the layer plots are in `all`, so both gradient passes and the
            # layer analysis always run; the masks only for a method needing one
            jobs += [
                ("clip_gradients", {"model": self.model, "target": t, "set": "forget"}),
                ("clip_gradients", {"model": self.model, "target": self.retain_owner(t), "set": "retain"}),
                ("layer_analysis", {"model": self.model, "target": t}),
            ]
            if self.needs_any("clip", "mask"):
                jobs.append(("salun_masks", {"model": self.model, "target": t}))
            jobs += [("unlearn_clip", {"model": self.model, "target": t, "method": r}) for r in self.clip_runs]
            jobs += [
                ("evaluate_clip", {"model": self.model, "target": t, "method": r}) for r in ["base"] + self.clip_runs
            ]
        jobs += self.t2i_heavy_jobs() + self.i2i_heavy_jobs()
        if self.robustness_on():
            jobs += [(r, w) for r in self.attack_rules() for w in self.attack_jobs(r)]
        return _unique(jobs)

    def t2i_heavy_jobs(self) -> list:
        if not self.t2i_targets:
            return []
        make = "pretrain_t2i" if self.config["t2i"]["source"] == "train" else "export_t2i"
        judge = "train_judge" if self.judge["kind"] == "train" else "import_judge"
        jobs = [(make, {"t2i": self.t2i}), (judge, {})]
        for t in self.t2i_targets:
            jobs += [j for m in self.t2i_methods for j in self.cost_jobs("t2i", m, t)]
            jobs += [
                (rule, {"t2i": self.t2i, "target": t, "method": m})
                for rule in ("generate_t2i", "evaluate_t2i")
                for m in ["base"] + self.t2i_methods
            ]
        return jobs

    def i2i_heavy_jobs(self) -> list:
        if not self.i2i_methods:
            return []
        make = "train_i2i" if self.i2i["source"] == "train" else "import_i2i"
        m = {"model": self.i2i_model}
        return (
            [("i2i_images", {}), ("i2i_sets", {}), (make, m)]
            + [("unlearn_i2i", m | {"method": x}) for x in self.i2i_methods]
            + [("evaluate_i2i", m | {"method": x}) for x in ["base"] + self.i2i_methods]
        )


def _unique(jobs: list) -> list:
    """Jobs in first-seen order, each once (the shared retain pass)."""
    seen, out = set(), []
    for rule, w in jobs:
        key = (rule, tuple(sorted(w.items())))
        if key not in seen:
            seen.add(key)
            out.append((rule, w))
    return out
