"""One function per rule of workflow/rules/i2i.smk: I/O here, algorithms in
:mod:`unlearnflow.data.objects`, :mod:`unlearnflow.models.i2i`,
:mod:`unlearnflow.methods.i2i` and :mod:`unlearnflow.metrics.i2i_eval`."""

from __future__ import annotations

import json
from pathlib import Path

from ..io import UnlearnflowError, atomic_path, read_json, write_json

FAMILY = "i2i"


# ------------------------------------------------------------ data
def i2i_images(inp: dict, out: dict, params: dict) -> None:
    """Rule ``i2i_images``: the synthetic objects' train/test pictures."""
    from ..data.objects import write_images
    from ..data.synthetic import SyntheticSpec

    spec = SyntheticSpec.from_params(params["synthetic"])
    info = write_images(spec, params["per_class"], out)
    print(f"i2i images: {info['counts']} of {len(info['classes'])} classes")


def i2i_sets(inp: dict, out: dict, params: dict) -> None:
    """Rule ``i2i_sets``: forget/retain/test sets by class, and the proxy set."""
    from ..data.objects import split_sets
    from ..data.synthetic import SyntheticSpec

    spec = SyntheticSpec.from_params(params["synthetic"])
    summary = split_sets(
        inp, out, spec, params["forget_classes"], params["retain_classes"], params["proxy"], params.get("per_class")
    )
    print(json.dumps(summary["counts"]))


# ------------------------------------------------------------ models
def train_i2i(inp: dict, out: dict, params: dict) -> None:
    """Rule ``train_i2i``: build the adapter from its config, train it on the
    training images for the configured tasks, write the model folder."""
    import torch

    from ..models import i2i
    from ..models.clip import resolve_device

    dev = resolve_device(params.get("device", "auto"))
    torch.manual_seed(int(params["seed"]))
    model = i2i.build_model(params["adapter"], dict(params.get("model_cfg") or {}))
    images, _ = i2i.load_images(inp["train"], model.image_size)
    t = params["train"]
    stats = i2i.train_i2i(
        model,
        images,
        i2i.parse_tasks(params["tasks"]),
        epochs=int(t["epochs"]),
        batch_size=int(t["batch_size"]),
        lr=float(t["lr"]),
        weight_decay=float(t["weight_decay"]),
        hole_weight=float(t.get("hole_weight", 1.0)),
        warmup_steps=int(t.get("warmup_steps", 20)),
        seed=int(params["seed"]),
        device=dev,
        threads=params.get("threads"),
    )
    info = i2i.save_i2i(model.cpu(), Path(out["config"]).parent, {"source": "train", "train": stats})
    print(f"{model.adapter}: {info['n_params']} parameters, loss {stats['first_loss']:.4f} -> {stats['final_loss']:.4f} in {stats['seconds']} s")


def import_i2i(inp: dict, out: dict, params: dict) -> None:
    """Rule ``import_i2i``: wrap a user's checkpoint through its adapter."""
    from ..models.i2i import adapter_class, save_i2i

    if not params.get("checkpoint"):
        raise UnlearnflowError("i2i.checkpoint: a checkpoint path is needed with i2i.source: checkpoint")
    cls = adapter_class(params["adapter"])
    model = cls.import_checkpoint(params["checkpoint"], dict(params.get("model_cfg") or {}))
    source = {"source_stamp": params.get("source_stamp"), "source_files": len(inp.get("source") or [])}
    info = save_i2i(model, Path(out["config"]).parent, {"source": "checkpoint", "checkpoint": str(params["checkpoint"]), **source})
    print(f"imported {params['checkpoint']} through {cls.adapter}: {info['n_params']} parameters")


# ------------------------------------------------------------ unlearning
def _load_i2i(inp: dict, device):
    from ..models.i2i import load_i2i, model_fingerprint

    model_dir = Path(inp["config"]).parent
    return load_i2i(model_dir, device=device), model_fingerprint(model_dir)


def _i2i_context(model, inp: dict, params: dict):
    from .. import method_table
    from ..methods.i2i.loop import I2IContext
    from ..models.i2i import load_images, parse_tasks

    return I2IContext(
        model=model,
        forget=load_images(inp["forget"], model.image_size)[0],
        retain=load_images(inp["retain"], model.image_size)[0],
        tasks=parse_tasks(params["tasks"]),
        seed=int(params.get("seed", 0)),
        retain_set=method_table.merge_params("i2i", params["method"], params.get("params"))["retain_set"],
    )


def unlearn_i2i(inp: dict, out: dict, params: dict) -> None:
    """Rule ``unlearn_i2i``: one method from the base model: the delta (only
    the changed tensors; encoder tensors only for the encoder methods), the
    per-step trace and an info record."""
    from .family import Family, run_unlearning

    family = Family(
        "i2i",
        _load_i2i,
        _i2i_context,
        empty_trace="step",
        seed_first=False,  # the i2i loop seeds itself
        target_in_record=False,
        info_head=lambda params, base: {"family": FAMILY, "base_fingerprint": base},
    )
    run_unlearning(family, inp, out, params)


# ------------------------------------------------------------ evaluation
def _feature_nets(params: dict, inp: dict, device):
    """(CLIP net for the CLIP cosine and the embeddings, net for FID and IS)."""
    from ..metrics.images import feature_net

    f = params["features"]
    if f["kind"] == "clip":
        net = feature_net("clip", clip_dir=Path(inp["clip_config"]).parent, device=device)
    else:
        net = feature_net(f["kind"], arch=f.get("arch"), pretrained=f.get("pretrained"), device=device)
    fid_net = net if params.get("fid_network", "features") == "features" else feature_net("inception", device=device)
    return net, fid_net


def evaluate_i2i(inp: dict, out: dict, params: dict) -> None:
    """Rule ``evaluate_i2i``: the original (method ``base``) or base + delta."""
    import pandas as pd
    import torch

    from .. import provenance
    from ..io import save_tensors
    from ..metrics.i2i_eval import SPLITS, evaluate
    from ..metrics.images import image_grid, lpips_net
    from ..models.clip import resolve_device
    from ..models.i2i import load_i2i, load_images, model_fingerprint, parse_tasks

    if params.get("threads"):
        torch.set_num_threads(int(params["threads"]))
    dev = resolve_device(params.get("device", "auto"))
    model_dir = Path(inp["config"]).parent
    model = load_i2i(model_dir, device=dev, delta=inp.get("delta"))
    tasks = parse_tasks(params["tasks"])
    sets = {s: load_images(inp[f"test_{s}"], model.image_size)[0] for s in SPLITS}
    net, fid_net = _feature_nets(params, inp, dev)
    classes = read_json(inp["classes"])["classes"]
    lp = params.get("lpips") or {}
    lpips = lpips_net(lp.get("net", "alex"), inp.get("lpips_backbone"), dev) if lp.get("enabled") else None
    rows, embeddings, grid_rows = evaluate(
        model,
        sets,
        tasks,
        net,
        fid_net,
        classes,
        is_splits=int(params.get("is_splits", 10)),
        composite=bool(params.get("composite", False)),
        batch_size=int(params.get("batch_size", 128)),
        grid=int(params.get("grid", 8)),
        lpips=lpips,
    )
    method = "original" if params["method"] == "base" else params["method"]
    record = {
        "method": method,
        "model": model_dir.name,
        "base_fingerprint": model_fingerprint(model_dir),
        "delta": inp.get("delta"),
        "features": net.name,
        "fid_network": fid_net.name,
        "lpips_network": None if lpips is None else lpips.name,
        "composite": bool(params.get("composite", False)),
        "images": {s: len(x) for s, x in sets.items()},
        "rows": rows,
    }
    prov = provenance.evaluation_record(
        model_fingerprint=record["base_fingerprint"],
        delta=inp.get("delta"),
        seeds={"train": provenance.train_seed(read_json(inp["info"]))},
        feature_net={
            "features": net.name,
            "fid_network": fid_net.name,
            "lpips_network": record["lpips_network"],
            **(params.get("features") or {}),
        },
    )
    record = provenance.stamp(record, prov)
    save_tensors(out["embeddings"], embeddings, {"format": "unlearnflow.i2i_embeddings/1", "method": method, "features": net.name})
    img = image_grid(torch.cat(grid_rows), nrow=max(len(r) for r in grid_rows), upscale=2)
    with atomic_path(out["grid"], suffix=".png") as tmp:
        img.save(tmp, format="PNG")
    write_json(out["json"], record)
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f"))


# ------------------------------------------------------------ tables and figures
def i2i_table(inp: dict, out: dict, params: dict) -> None:
    """Rule ``i2i_table``: one row per (method, task), and the reference's two layouts."""
    from ..metrics import i2i_eval
    from ..tables import read_benchmark, write_provenance, write_tables

    evals = inp["evals"] if isinstance(inp["evals"], list) else [inp["evals"]]
    records = [read_json(p) for p in evals]
    bench = inp.get("benchmarks") or []
    bench = bench if isinstance(bench, list) else [bench]
    seconds = {}
    for path in bench:  # results/benchmarks/unlearn_i2i/{model}/{method}.tsv
        seconds[Path(path).stem] = read_benchmark(path)["seconds"]
    df = i2i_eval.i2i_table(records, seconds)
    write_tables(df, out["csv"], out["md"], out["tex"], params.get("caption", "Image-to-image unlearning"), caption_in_md=True)
    write_provenance(out["provenance"], records, df)
    fid_is, clip = i2i_eval.reference_tables(records, params["tasks"], params["model"])
    for frame, key in ((fid_is, "fid_is"), (clip, "clip_cosine")):
        with atomic_path(out[key], suffix=".csv") as tmp:
            frame.to_csv(tmp, index=False, float_format="%.4f")
    print(df.to_markdown(index=False, floatfmt=".3f"))
    nets = sorted({(r["features"], r["fid_network"]) for r in records})
    print(f"features: {nets}")


def i2i_tsne(inp: dict, out: dict, params: dict) -> None:
    """Rule ``i2i_tsne``: CLIP embeddings of the outputs, original vs unlearned."""
    from ..io import load_tensors
    from ..metrics.i2i_eval import tsne_plot

    embeddings = {}
    for key, label in (("original", "original"), ("unlearned", params["method"])):
        tensors, meta = load_tensors(inp[key], "unlearnflow.i2i_embeddings/1", "an i2i embeddings")
        embeddings[label] = tensors
    if set(embeddings["original"]) != set(embeddings[params["method"]]):
        raise UnlearnflowError(f"{inp['unlearned']}: tasks/splits differ from {inp['original']}")
    tsne_plot(
        embeddings, out["png"], params.get("title", "t-SNE of output embeddings"), seed=int(params.get("seed", 0)), tasks=params.get("tasks")
    )
    print(json.dumps({"png": out["png"], "panels": sorted({k.split('/')[0] for k in embeddings['original']})}))
