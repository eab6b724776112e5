"""Faults and bad input not covered elsewhere: a job killed mid-run, corrupt
safetensors, schema errors in nested keys, unknown methods and stages, and
checkpoints that would execute code when unpickled."""

import base64
import json
import os
import pickle
import signal
import subprocess
import time

import open_clip
import pytest
import torch

from conftest import BIN, REPO, small_config
from unlearnflow.io import InputFileError, UnlearnflowError
from unlearnflow.models.clip import export_open_clip, load_clip, model_files, save_clip, tiny_config

SMALL = tiny_config(
    {
        "embed_dim": 32,
        "vision_cfg": {"width": 32, "layers": 1, "head_width": 16, "patch_size": 8},
        "text_cfg": {"width": 32, "heads": 2, "layers": 1},
    }
)


@pytest.fixture(autouse=True)
def _passive_omp(monkeypatch):
    # torch's OpenMP threads spin while they wait; when the 2 cores are shared
    # with another run, spinning makes each training step ~10x slower
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")


# ---------------------------------------------------------------- (a) kill
def _incomplete_markers(workdir) -> set:
    d = workdir / ".snakemake/incomplete"
    return {base64.urlsafe_b64decode(p.name).decode() for p in d.iterdir()} if d.exists() else set()


def _group_alive(pgid: int) -> list[int]:
    alive = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if os.getpgid(int(p)) == pgid:
                    alive.append(int(p))
            except ProcessLookupError:
                pass
    return alive


@pytest.mark.slow
def test_a_job_killed_mid_run_leaves_nothing_trusted_and_the_rerun_completes(workflow):
    epochs = 3
    cfg = small_config(clip={"train": {"epochs": epochs, "batch_size": 64}})
    workflow.run("results/data/laion/00000.tar", "results/data/laion/00001.tar", cfg=cfg)
    model = workflow.workdir / "results/models/tiny_clip"
    outputs = model_files(model)
    target = str(outputs["info"].relative_to(workflow.workdir))
    log = workflow.workdir / "logs/pretrain_clip/tiny_clip.log"
    cmd = [
        str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(workflow.workdir), "--configfile", str(workflow.workdir / "config.yaml"),
        "--cores", "2", target,
    ]  # fmt: skip
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}", NO_ALBUMENTATIONS_UPDATE="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 180
        # wait until the job is training (its progress bar is in the log)
        while not (log.exists() and "pretrain tiny CLIP" in log.read_text()):
            assert proc.poll() is None, "snakemake ended before the job started training"
            assert time.time() < deadline, "the pretraining job never started"
            time.sleep(0.2)
        time.sleep(1.0)
        assert "stage pretrain_clip finished" not in log.read_text(), "too late: the job already finished"
        os.killpg(proc.pid, signal.SIGKILL)  # snakemake and its job, mid-job
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 30
    while _group_alive(proc.pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not _group_alive(proc.pid), "the job outlived snakemake"

    # no output a rerun could trust: none was written (only hidden temp files may be left)
    assert not any(p.exists() for p in outputs.values())
    if model.exists():
        assert all(p.name.startswith(".") for p in model.iterdir())
    # Snakemake recorded the job as started and never finished
    assert {str(p.relative_to(workflow.workdir)) for p in outputs.values()} <= _incomplete_markers(workflow.workdir)
    # A kill between two of the job's writes (save_clip writes the config,
    # then the weights, then model.json) would leave a complete-looking config
    # file behind: put one there, as such a kill would have.
    outputs["config"].parent.mkdir(parents=True, exist_ok=True)
    outputs["config"].write_text("{}")
    # Snakemake does not trust it: without the profile's --rerun-incomplete
    # it refuses to go on and names the file
    code, out = workflow.run("-n", "--workflow-profile", "none", target, check=False)
    assert code != 0 and "seem to be incomplete" in out
    assert "results/models/tiny_clip/open_clip_config.json" in out.split("Incomplete files:", 1)[1]

    # the killed run's lock stays behind: the rerun says how to clear it ...
    code, out = workflow.run(target, check=False)
    assert code != 0 and "--unlock" in out
    workflow.run("--unlock")
    # ... and once unlocked, the rerun (the default profile has
    # --rerun-incomplete) redoes the job and completes
    workflow.run(target)
    bundle = load_clip(model)
    assert bundle.info["train"]["epochs"] == epochs
    assert not _incomplete_markers(workflow.workdir)
    assert sorted(p.name for p in model.iterdir()) == sorted(p.name for p in outputs.values())


# ------------------------------------------------------ (b) corrupt files
def _damaged(kind: str, good: bytes) -> bytes:
    if kind == "truncated":
        return good[: len(good) // 2]
    if kind == "empty":
        return b""
    if kind == "garbage":
        return b"\x00\xff" * 64
    if kind == "header_too_long":  # claims a header longer than the file
        return (10**9).to_bytes(8, "little") + good[8:]
    if kind == "pickle":  # a torch checkpoint renamed to .safetensors
        return pickle.dumps({"w": [1.0, 2.0]})
    raise ValueError(kind)


DAMAGE = ["truncated", "empty", "garbage", "header_too_long", "pickle"]


@pytest.fixture(scope="module")
def good_files(tmp_path_factory):
    from unlearnflow.gradients import FORMAT as GRAD_FORMAT
    from unlearnflow.masks import global_topk_masks, save_mask
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("good")
    torch.manual_seed(0)
    model = open_clip.CLIP(**SMALL)
    save_clip(model, SMALL, d / "model", {"source": "test"})
    grads = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    save_file(grads, str(d / "forget.safetensors"), metadata={"format": GRAD_FORMAT, "set": "forget"})
    masks, info = global_topk_masks(grads, [0.5])[0.5]
    save_mask(d / "mask.safetensors", masks, {"fraction": "0.5", "kept": info["kept"], "source": "g"})
    name = "visual.proj"
    save_file({name: torch.zeros_like(dict(model.named_parameters())[name])}, str(d / "delta.safetensors"))
    return d


def _load_gradients(path):
    from unlearnflow.gradients import load_gradients

    return load_gradients(path)


def _load_mask(path):
    from unlearnflow.masks import load_mask

    return load_mask(path)


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("name,loader", [("forget.safetensors", _load_gradients), ("mask.safetensors", _load_mask)])
def test_corrupt_gradient_or_mask_file_is_an_error_naming_it(good_files, tmp_path, name, loader, damage):
    loader(good_files / name)  # the intact file loads
    bad = tmp_path / f"{damage}_{name}"
    bad.write_bytes(_damaged(damage, (good_files / name).read_bytes()))
    with pytest.raises(InputFileError, match=bad.name) as exc:
        loader(bad)
    assert exc.value.path == str(bad)


@pytest.mark.parametrize("damage", DAMAGE)
def test_corrupt_delta_is_an_error_naming_it(good_files, tmp_path, damage):
    load_clip(good_files / "model", delta=good_files / "delta.safetensors")
    bad = tmp_path / f"{damage}_delta.safetensors"
    bad.write_bytes(_damaged(damage, (good_files / "delta.safetensors").read_bytes()))
    with pytest.raises(InputFileError, match=bad.name):
        load_clip(good_files / "model", delta=bad)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_model_weights_are_an_error_naming_the_file(good_files, tmp_path, damage):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(good_files / "model", model)
    weights = model_files(model)["weights"]
    weights.write_bytes(_damaged(damage, weights.read_bytes()))
    with pytest.raises(InputFileError, match="open_clip_model.safetensors"):
        load_clip(model)


def test_a_corrupt_gradient_through_the_cli_names_the_file_and_exits_1(good_files, tmp_path, capfd):
    from unlearnflow.cli import main

    bad = tmp_path / "forget.safetensors"
    bad.write_bytes(_damaged("truncated", (good_files / "forget.safetensors").read_bytes()))
    code = main(
        [
            "layer_analysis",
            "--input", f"grad_forget={bad}",
            "--input", f"grad_retain={good_files / 'forget.safetensors'}",
            "--input", f"weights={good_files / 'model/open_clip_model.safetensors'}",
            "--output", f"table={tmp_path / 'l.parquet'}",
            "--output", f"plot={tmp_path / 'l.png'}",
            "--params", "{}",
        ]
    )  # fmt: skip
    err = capfd.readouterr().err
    assert code == 1 and str(bad) in err and "safetensors" in err
    assert not (tmp_path / "l.parquet").exists() and not (tmp_path / "l.png").exists()


# ------------------------------------------------ (c) schema, nested keys
@pytest.mark.parametrize(
    "change,expected",
    [
        (
            {"methods": {"ssd": {"lamdbas": [1.0]}}},
            ["'lamdbas' was unexpected", "['methods']['ssd']"],
        ),
        (
            {"methods": {"slug": {"forget_metric": "fa3"}}},
            ["'fa3' is not one of ['auto', 'fa1', 'fa5']", "['methods']['slug']['forget_metric']"],
        ),
    ],
    ids=["ssd_key", "slug_metric"],
)
def test_schema_errors_in_method_settings_name_the_key_and_allowed_values(workflow, change, expected):
    code, out = workflow.run("-n", cfg=small_config(**change), check=False)
    assert code != 0 and "Error validating config file" in out
    for text in expected:
        assert text in out, (text, out[-3000:])


# method names and params are the method table's (unlearnflow.method_table)
@pytest.mark.parametrize(
    "change,expected",
    [
        (
            {"run_methods": ["slug", "sulg"]},
            "config run_methods: unknown clip methods ['sulg']; known clip methods: ['slug', 'ft', 'ga', 'ga_ft', 'salun', 'ssd']",
        ),
        (
            {"methods": {"sulg": {}}},
            "config methods: unknown clip methods ['sulg']; known clip methods: ['slug', 'ft', 'ga', 'ga_ft', 'salun', 'ssd']",
        ),
        (  # the schema has no fragment for the t2i methods: the table checks
            {"t2i": {"targets": [], "methods": {"slug": {"max_probs": 3}}}},
            "t2i.methods.slug: t2i method 'slug' has no params ['max_probs']",
        ),
    ],
    ids=["run_methods", "methods_name", "param_name"],
)
def test_unknown_method_names_and_params_name_the_key_and_the_known_ones(workflow, change, expected):
    code, out = workflow.run("-n", cfg=small_config(**change), check=False)
    assert code != 0 and expected in out, out[-3000:]


# ----------------------------------------------- (d) unknown names in the DAG
def test_unknown_target_in_a_method_path_names_the_known_ones(workflow):
    code, out = workflow.run("-n", "results/unlearn/tiny_clip/nobody/slug/search.png", cfg=small_config(), check=False)
    assert code != 0 and "unknown target 'nobody'" in out and "known targets: ['kite', 'mira_castell']" in out


def test_unknown_method_in_a_path_names_the_known_ones(workflow):
    code, out = workflow.run("-n", "results/unlearn/tiny_clip/mira_castell/sulg/delta.safetensors", cfg=small_config(), check=False)
    assert code != 0 and "unknown clip method 'sulg'; known clip methods: ['slug'," in out


def test_unknown_stage_names_the_known_ones(capfd):
    from unlearnflow.cli import main

    assert main(["slugg"]) == 1
    err = capfd.readouterr().err
    assert "unknown stage 'slugg'" in err and "slug_search_plot" in err and "costs_table" in err


# ------------------------------------ (e) loading never executes code
class _Payload:
    """Unpickling this creates a directory: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _register_small_config(tmp_path) -> str:
    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    (cfg_dir / "unlearnflow-faults-tiny.json").write_text(json.dumps(SMALL))
    open_clip.add_model_config(cfg_dir)
    return "unlearnflow-faults-tiny"


@pytest.mark.parametrize("where", ["inside_state_dict", "whole_file"])
def test_a_checkpoint_with_a_code_payload_is_refused(tmp_path, where):
    arch = _register_small_config(tmp_path)
    marker = tmp_path / "payload_ran"
    state = open_clip.CLIP(**SMALL).state_dict()
    ckpt = tmp_path / "epoch_1.pt"
    if where == "inside_state_dict":
        state["visual.payload"] = _Payload(marker)
        torch.save(state, ckpt)
    else:
        ckpt.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    out = tmp_path / "model"
    with pytest.raises((pickle.UnpicklingError, UnlearnflowError)):
        export_open_clip(arch, str(ckpt), out)
    assert not marker.exists(), "unpickling the checkpoint executed code"
    assert not any(p.exists() for p in model_files(out).values())
    # the same weights, clean, export fine (the refusal is about the payload)
    torch.save(open_clip.CLIP(**SMALL).state_dict(), ckpt)
    info = export_open_clip(arch, str(ckpt), out)
    assert info["pretrained"] == str(ckpt) and load_clip(out).model is not None


def test_a_model_folder_with_only_a_pickle_checkpoint_is_not_loaded(good_files, tmp_path):
    """load_clip reads safetensors only: a .bin beside the config is never unpickled."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(good_files / "model", model)
    model_files(model)["weights"].unlink()
    marker = tmp_path / "payload_ran"
    (model / "open_clip_pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(InputFileError, match="open_clip_model.safetensors"):
        load_clip(model)
    assert not marker.exists()
