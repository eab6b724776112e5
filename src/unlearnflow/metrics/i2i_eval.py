"""Evaluation of image-to-image unlearning per split, its tables and t-SNE plot.

For a model (the original, or base + a method's delta) and every task, the
outputs on the held-out pictures of the forget classes and of the retain
classes are scored against their own ground truth, as Li et al. (ICLR 2024)
report them:

- FID between the outputs and the ground-truth pictures of the split (a
  higher forget FID = more forgetting; the retain FID should stay);
- IS of the outputs (mean and std over ``is_splits`` parts): class
  probabilities from the feature network (zero-shot over the object names
  for a CLIP tower, Inception's softmax otherwise);
- CLIP: the mean cosine between each output and its own ground truth in a
  CLIP image tower;
- SSIM and PSNR of each output against its own ground truth (torchmetrics),
  and LPIPS (torchmetrics' linear heads on an AlexNet / VGG backbone) when
  ``lpips.enabled``: its backbone's ImageNet weights are torchvision's
  (downloaded on first use) or a local file; off, the table says so.

Scorers are the shared ones of :mod:`unlearnflow.metrics.images`; the
embedded default scores everything in the tiny CLIP's image tower (its name
is in every record: such an FID is not comparable with an Inception FID).
Outputs are the model's whole output images (``composite: false``), or the
output pasted into the hole only (``composite: true``, what an inpainting
user would see; the reference pastes with a blurred mask).

Tables: ``i2i_unlearning`` (one row per method and task: fid/is/clip per
split and the method's seconds) and the reference code's two layouts
(``fid_is_eval``: checkpoint, FID_R, ISmean_R, ISstd_R, FID_F, ISmean_F,
ISstd_F; ``clip_cosine``: checkpoint, CLIP_R, CLIP_F).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..io import UnlearnflowError, atomic_path

SPLITS = ("forget", "retain")
PAIRED = ("ssim", "psnr", "lpips")  # each output against its own ground truth
TABLE_COLUMNS = [
    "method", "task",
    *(f"{m}_{s}" for s in SPLITS for m in ("fid", "is", "clip", *PAIRED)),
    "seconds", "provenance",
]  # fmt: skip
FID_IS_COLUMNS = ["checkpoint", "FID_R", "ISmean_R", "ISstd_R", "FID_F", "ISmean_F", "ISstd_F"]
CLIP_COLUMNS = ["checkpoint", "CLIP_R", "CLIP_F"]


def grid_indices(n: int, k: int) -> list[int]:
    """``k`` indices spread over ``n`` (the sets are ordered by class)."""
    return sorted({int(i) for i in np.linspace(0, n - 1, min(k, n))})


def evaluate(model, sets: dict, tasks, net, fid_net, class_names, *, is_splits=10, composite=False, batch_size=128, grid=8, lpips=None):
    """Score one model. ``sets``: {split: uint8 ground truth}; ``lpips``: an
    :class:`~.images.LPIPSNet` or None (the rows' lpips is then NaN).
    Returns (rows, {task/split: CLIP features of the outputs}, grid rows)."""
    import torch

    from ..models.i2i import batch_mask, hide, run_task, to_float, to_uint8
    from .images import fid, inception_score, paired_cosine, ssim_psnr

    rows, embeddings, grid_rows = [], {}, []
    gt_clip = {s: net.image_features(x) for s, x in sets.items()}
    gt_fid = gt_clip if fid_net is net else {s: fid_net.image_features(x) for s, x in sets.items()}
    for split, gt in sets.items():
        pick = grid_indices(len(gt), grid)
        grid_rows.append(gt[pick])
        for task in tasks:
            out = run_task(model, gt, task, batch_size=batch_size, paste=composite)
            f_clip = net.image_features(out)
            f_fid = f_clip if fid_net is net else fid_net.image_features(out)
            is_mean, is_std = inception_score(fid_net.probs(out, class_names), splits=is_splits)
            rows.append(
                {
                    "task": task.name,
                    "split": split,
                    "fid": fid(f_fid, gt_fid[split]),
                    "is_mean": is_mean,
                    "is_std": is_std,
                    "clip": paired_cosine(f_clip, gt_clip[split]),
                    **ssim_psnr(out, gt),
                    "lpips": float("nan") if lpips is None else lpips(out, gt),
                    "n": len(gt),
                }
            )
            embeddings[f"{task.name}/{split}"] = torch.from_numpy(f_clip.astype(np.float32))
            x = to_float(gt[pick])
            grid_rows.append(to_uint8(hide(x, batch_mask(task, len(x), x.shape[-1]), 0.5)))
            grid_rows.append(out[pick])
    return rows, embeddings, grid_rows


# ------------------------------------------------------------------ tables
def i2i_table(records: list[dict], seconds: dict) -> pd.DataFrame:
    """One row per (method, task), the original first; ``seconds``: {method: s}."""
    rows = []
    for r in records:
        by = {}
        for row in r["rows"]:
            by.setdefault(row["task"], {})[row["split"]] = row
        for task, splits in by.items():
            missing = [s for s in SPLITS if s not in splits]
            if missing:
                raise UnlearnflowError(f"i2i evaluation of {r['method']}: task {task} lacks the {missing} split(s)")
            row = {"method": r["method"], "task": task}
            for s in SPLITS:
                row |= {f"fid_{s}": splits[s]["fid"], f"is_{s}": splits[s]["is_mean"], f"clip_{s}": splits[s]["clip"]}
                # records from before SSIM / PSNR / LPIPS: NaN, never a made-up value
                row |= {f"{m}_{s}": splits[s].get(m, float("nan")) for m in PAIRED}
            row["seconds"] = seconds.get(r["method"], float("nan"))
            row["provenance"] = r.get("provenance_id")
            rows.append(row)
    df = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    methods = list(dict.fromkeys(["original"] + [r["method"] for r in records]))
    tasks = list(dict.fromkeys(df["task"]))
    df["_m"] = df["method"].map(methods.index)
    df["_t"] = df["task"].map(tasks.index)
    return df.sort_values(["_t", "_m"]).drop(columns=["_m", "_t"]).reset_index(drop=True)


def task_prefix(task: dict) -> str:
    """The reference's name for a task: center_0.25_, outpaint_0.5_."""
    return f"{'center' if task['kind'] == 'inpaint' else 'outpaint'}_{float(task['ratio'])}_"


def reference_tables(records: list[dict], tasks: list[dict], model: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    prefix = {t["name"]: task_prefix(t) for t in tasks}
    fid_is, clip = [], []
    for r in records:
        by = {}
        for row in r["rows"]:
            by.setdefault(row["task"], {})[row["split"]] = row
        for task, s in by.items():
            ckpt = f"{model}/{r['method']}/{prefix.get(task, task + '_')}"
            fr, ff = s["retain"], s["forget"]
            fid_is.append([ckpt, fr["fid"], fr["is_mean"], fr["is_std"], ff["fid"], ff["is_mean"], ff["is_std"]])
            clip.append([ckpt, fr["clip"], ff["clip"]])
    return pd.DataFrame(fid_is, columns=FID_IS_COLUMNS), pd.DataFrame(clip, columns=CLIP_COLUMNS)


# ------------------------------------------------------------------ t-SNE
def tsne_plot(embeddings: dict[str, dict], path, title: str, seed: int = 0, tasks: list[str] | None = None) -> None:
    """``embeddings``: {model label: {task/split: (N, D) tensor}}; one panel per
    task (in the order of ``tasks``), one colour per (model, split)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.manifold import TSNE

    labels = list(embeddings)
    present = list(dict.fromkeys(k.split("/")[0] for k in embeddings[labels[0]]))
    tasks = [t for t in tasks or [] if t in present] + [t for t in present if t not in (tasks or [])]
    fig = Figure(figsize=(4.2 * len(tasks), 4.2), dpi=130)
    FigureCanvasAgg(fig)
    colors = {("forget", 0): "#d62728", ("retain", 0): "#1f77b4", ("forget", 1): "#ff9896", ("retain", 1): "#2ca02c"}
    for ti, task in enumerate(tasks):
        ax = fig.add_subplot(1, len(tasks), ti + 1)
        groups = []
        for li, label in enumerate(labels):
            for split in SPLITS:
                x = embeddings[label][f"{task}/{split}"].numpy()
                groups.append((x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12), label, split, li))
        x = np.concatenate([g[0] for g in groups])
        y = TSNE(n_components=2, perplexity=min(30.0, (len(x) - 1) / 3), init="pca", random_state=seed).fit_transform(x)
        start = 0
        for chunk, label, split, li in groups:
            part = y[start : start + len(chunk)]
            start += len(chunk)
            ax.scatter(
                part[:, 0], part[:, 1], s=8, alpha=0.75, color=colors[(split, min(li, 1))],
                marker="o" if li == 0 else "^", label=f"{label} / {split}",
            )  # fmt: skip
        ax.set_title(task, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if ti == 0:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
