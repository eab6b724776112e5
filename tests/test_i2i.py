"""Image-to-image unlearning (Li et al., ICLR 2024): tasks, noise, losses, the
method and its baselines, the adapters, and the i2i branch of the DAG.

Models are tiny (a 16-px MAE-style ViT of one block); every run is a few steps."""

import copy
import json

import pandas as pd
import pytest
import torch
import torchvision

from conftest import small_config
from unlearnflow.io import InputFileError, UnlearnflowError, load_tensors
from unlearnflow.methods import METHODS, get_method
from unlearnflow.methods.i2i import loop
from unlearnflow.methods.i2i.loop import I2IContext, Step, li_loss, noise_images
from unlearnflow.models import i2i
from unlearnflow.stages.i2i import import_i2i

TASKS = i2i.parse_tasks(
    [
        {"name": "inpaint_1_4", "kind": "inpaint", "ratio": 0.25},
        {"name": "inpaint_1_2", "kind": "inpaint", "ratio": 0.5},
        {"name": "outpaint", "kind": "outpaint", "ratio": 0.5},
    ]
)
TINY_MAE = {"image_size": 16, "patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2, "decoder_dim": 16, "decoder_depth": 1}
BASELINES = ["max_loss", "noisy_label", "retain_label", "random_encoder"]
FAST = {"max_steps": 3, "batch_size": 4, "lr": 1e-2, "warmup_steps": 0}


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return i2i.build_model("timm_mae", TINY_MAE).eval()


def images(n, seed, size=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def context(model=None, **kw):
    return I2IContext(model=model or tiny_model(), forget=images(8, 1), retain=images(8, 2), tasks=TASKS, seed=0, **kw)


# ------------------------------------------------------------------ tasks
def test_task_masks_hide_exactly_the_expected_pixels():
    quarter, half, out = (t.mask(32) for t in TASKS)
    rows = torch.arange(32)
    inside = lambda lo, hi: ((rows >= lo) & (rows < hi))  # noqa: E731
    # a centre hole of 1/4 of the side: rows and columns 12..19
    assert torch.equal(quarter, inside(12, 20)[:, None] & inside(12, 20)[None, :])
    assert quarter.sum() == 64
    # 1/2 of the side: 8..23
    assert torch.equal(half, inside(8, 24)[:, None] & inside(8, 24)[None, :])
    assert half.sum() == 256
    # outpainting, ratio 1/2: strips of 8 px on every border, the centre 16x16 visible
    assert torch.equal(out, ~(inside(8, 24)[:, None] & inside(8, 24)[None, :]))
    assert out.sum() == 1024 - 256
    # other sizes: 16 px -> rows 6..9; 20 px -> a 5-px hole at 7..11 (side rounded)
    assert torch.equal(TASKS[0].mask(16)[6:10, 6:10], torch.ones(4, 4, dtype=torch.bool)) and TASKS[0].mask(16).sum() == 16
    assert TASKS[0].mask(20)[7:12, 7:12].all() and TASKS[0].mask(20).sum() == 25


def test_hide_and_composite_touch_only_the_masked_pixels():
    x = torch.rand(2, 3, 32, 32)
    m = i2i.batch_mask(TASKS[0], 2, 32)
    assert m.shape == (2, 1, 32, 32) and m.sum() == 2 * 64
    h = i2i.hide(x, m, fill=0.5)
    hole = m.bool().expand_as(x)
    assert torch.all(h[hole] == 0.5) and torch.equal(h[~hole], x[~hole])
    y = torch.zeros_like(x)
    c = i2i.composite(y, x, m)
    assert torch.all(c[hole] == 0) and torch.equal(c[~hole], x[~hole])


def test_bad_tasks_are_refused_by_name():
    with pytest.raises(UnlearnflowError, match="ratio 1.5"):
        i2i.Task("big", "inpaint", 1.5)
    with pytest.raises(UnlearnflowError, match="kind 'blur'"):
        i2i.Task("b", "blur", 0.5)
    with pytest.raises(UnlearnflowError, match="duplicate task names"):
        i2i.parse_tasks([{"name": "a", "kind": "inpaint", "ratio": 0.5}] * 2)


def test_every_sample_gets_one_of_the_task_masks():
    g = torch.Generator().manual_seed(0)
    m = i2i.random_masks(TASKS, 64, 32, g)
    sums = set(m.sum(dim=(1, 2, 3)).int().tolist())
    assert sums == {64, 256, 768}  # all three tasks drawn among 64 samples


# ------------------------------------------------------------------ sets
def test_forget_and_retain_sets_by_class_and_the_proxy_pool(tmp_path):
    from conftest import small_synthetic
    from unlearnflow.data import objects
    from unlearnflow.data.shards import iter_samples
    from unlearnflow.data.synthetic import SyntheticSpec

    spec = SyntheticSpec.from_params(small_synthetic())
    inp = {k: tmp_path / f"{k}.{'json' if k == 'classes' else 'tar'}" for k in ("train", "test", "classes")}
    objects.write_images(spec, {"train": 3, "test": 2}, inp)
    out = {k: tmp_path / f"{k}.tar" for k in ("forget", "retain", "proxy", "test_forget", "test_retain")}
    out["summary"] = tmp_path / "split.json"
    summary = objects.split_sets(inp, out, spec, ["ball", "kite"], ["star"], {"pool": "styles", "size": 4})
    assert summary["counts"] == {"forget": 6, "retain": 3, "test_forget": 4, "test_retain": 2, "proxy": 4}
    labels = lambda name: [s.meta["label"] for s in iter_samples(out[name])]  # noqa: E731
    assert sorted(set(labels("forget"))) == ["ball", "kite"] and set(labels("test_retain")) == {"star"}
    assert all(lab.startswith("star /") for lab in labels("proxy"))  # styled retain objects only
    # pictures are lossless PNG: the ground truth is exact
    assert next(iter(iter_samples(out["forget"]))).files["png"][:4] == b"\x89PNG"
    # unlearn_per_class keeps the first pictures of each class (test sets whole)
    capped = objects.split_sets(inp, out, spec, ["ball", "kite"], ["star"], {"pool": "styles", "size": 4}, per_class=2)
    assert capped["counts"] == {"forget": 4, "retain": 2, "test_forget": 4, "test_retain": 2, "proxy": 4}
    assert sorted(s.key for s in iter_samples(out["retain"])) == ["i2i_train_003_00000", "i2i_train_003_00001"]
    with pytest.raises(UnlearnflowError, match="i2i.forget_classes: \\['kyte'\\] not among the objects"):
        objects.split_sets(inp, out, spec, ["kyte"], ["star"], {"pool": "styles", "size": 4})
    with pytest.raises(UnlearnflowError, match="\\['star'\\] are in both"):
        objects.split_sets(inp, out, spec, ["star"], ["star"], {"pool": "styles", "size": 4})


# ------------------------------------------------------------------ noise
def test_noise_images_match_the_batch_mean_and_std_and_stay_in_range():
    g = torch.Generator().manual_seed(0)
    x = (0.5 + 0.1 * torch.randn(16, 3, 32, 32, generator=g)).clamp(0, 1)
    n = noise_images(x, "gaussian", torch.Generator().manual_seed(1))
    assert n.shape == x.shape
    assert abs(n.mean().item() - x.mean().item()) < 0.005
    assert abs(n.std().item() - x.std().item()) < 0.005
    # a bright, high-contrast batch: clamped to [0, 1]
    x2 = (0.9 + 0.4 * torch.randn(8, 3, 16, 16, generator=g)).clamp(0, 1)
    n2 = noise_images(x2, "gaussian", torch.Generator().manual_seed(2))
    assert n2.min() >= 0 and n2.max() <= 1 and (n2 == 1).float().mean() > 0.2
    # seeded: reproducible; independent of the pixels' arrangement
    assert torch.equal(n, noise_images(x, "gaussian", torch.Generator().manual_seed(1)))
    assert torch.equal(n, noise_images(x.flip(-1), "gaussian", torch.Generator().manual_seed(1)))
    assert torch.all(noise_images(x, "constant") == x.mean())
    u = noise_images(x, "uniform", torch.Generator().manual_seed(3))
    assert u.min() >= 0 and u.max() <= 1 and abs(u.mean().item() - 0.5) < 0.01


def test_gaussian_like_matches_the_latent_statistics():
    z = 3.0 + 2.0 * torch.randn(64, 100, generator=torch.Generator().manual_seed(0))
    n = loop.gaussian_like(z, torch.Generator().manual_seed(1))
    assert abs(n.mean().item() - z.mean().item()) < 0.05 and abs(n.std().item() - z.std().item()) < 0.05


# ------------------------------------------------------------------ losses
def test_li_loss_by_hand():
    z_f = torch.tensor([[1.0, 2.0]])
    z_n0 = torch.tensor([[0.0, 0.0]])
    z_r = torch.tensor([[1.0, 1.0]])
    z_r0 = torch.tensor([[1.0, 0.0]])
    loss, l_r, l_f = li_loss(z_f, z_n0, z_r, z_r0, retain_alpha=1.0, forget_alpha=0.2)
    assert l_f.item() == pytest.approx(2.5)  # (1 + 4) / 2
    assert l_r.item() == pytest.approx(0.5)  # (0 + 1) / 2
    assert loss.item() == pytest.approx(0.5 + 0.2 * 2.5)
    # a latent that is a tuple (a UNet's features) is one flat vector
    pair = (torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0]]))
    zero = (torch.zeros(1, 2), torch.zeros(1, 1))
    assert i2i.latent_mse(pair, zero).item() == pytest.approx((1 + 4 + 9) / 3)


def test_max_loss_terms_by_hand():
    from unlearnflow.methods.i2i.max_loss import max_loss_terms

    x = torch.zeros(1, 1, 2, 2)
    out_f = torch.full((1, 1, 2, 2), 0.5)  # forget MSE 0.25
    out_r = torch.tensor([[[[0.1, 0.1], [0.1, 0.1]]]])  # retain MSE 0.01
    loss, l_r, l_f = max_loss_terms(out_f, x, out_r, x, retain_alpha=1.0, forget_alpha=0.2)
    assert l_f.item() == pytest.approx(0.25) and l_r.item() == pytest.approx(0.01)
    assert loss.item() == pytest.approx(0.01 - 0.2 * 0.25)


def test_retain_label_targets_are_the_teachers_outputs_on_retain_images():
    from unlearnflow.methods.i2i.retain_label import retain_targets

    teacher = tiny_model()
    x_r = i2i.to_float(images(4, 2))
    m = i2i.batch_mask(TASKS[1], 6, 16)
    t = retain_targets(teacher, x_r, m, torch.Generator().manual_seed(0))
    with torch.no_grad():
        own = teacher(x_r, m[:4])
    assert t.shape == (6, 3, 16, 16)
    # every target is the teacher's output on one of the retain images
    assert all(any(torch.allclose(row, o, atol=1e-6) for o in own) for row in t)


# ------------------------------------------------------------ the methods
def test_the_registry_has_the_method_and_its_four_baselines():
    assert set(METHODS["i2i"]) == {"li", "li_proxy", *BASELINES}
    for name in METHODS["i2i"]:
        assert callable(get_method(name, "i2i").run)
    with pytest.raises(UnlearnflowError, match="known methods: .*li"):
        get_method("lii", "i2i")


@pytest.mark.parametrize("method", ["li", "li_proxy", *BASELINES])
def test_forget_alpha_zero_is_refused(method):
    with pytest.raises(UnlearnflowError, match="forget_alpha is 0, which disables forgetting"):
        get_method(method, "i2i").run(context(), {**FAST, "forget_alpha": 0.0})


@pytest.mark.parametrize("method", ["li", *BASELINES])
def test_every_forget_term_contributes(method):
    """The reference weights its baselines' forget term by (1 + label), which
    is 0 on forget samples for two of them: here each forget term has a
    non-zero gradient on the encoder, and other forget data change the loss."""
    module = get_method(method, "i2i")
    params = {**module.DEFAULTS, "retain_alpha": 0.0, "forget_alpha": 1.0}
    teacher = tiny_model()
    student = copy.deepcopy(teacher).train()
    g = torch.Generator().manual_seed(0)
    x_r = i2i.to_float(images(4, 2))
    m_f = i2i.random_masks(TASKS, 4, 16, g)
    m_r = i2i.random_masks(TASKS, 4, 16, g)

    def loss_on(x_f):
        step = Step(student, teacher, x_f, m_f, x_r, m_r, params, torch.Generator().manual_seed(5))
        return module.objective(step)

    loss, terms = loss_on(i2i.to_float(images(4, 1)))
    assert terms["forget_loss"] > 0
    student.zero_grad()
    loss.backward()
    enc = student.named_part("encoder")
    grad = sum(p.grad.abs().sum().item() for p in enc.values() if p.grad is not None)
    assert grad > 1e-6, f"{method}: the forget term gives the encoder no gradient"
    other, _ = loss_on(i2i.to_float(images(4, 9)))
    assert abs(other.item() - loss.item()) > 1e-6, f"{method}: the loss ignores the forget data"


def test_li_changes_the_encoder_only_and_the_decoder_stays_bit_identical(tmp_path):
    base = tiny_model()
    i2i.save_i2i(base, tmp_path / "m", {"source": "test"})
    result = get_method("li", "i2i").run(context(i2i.load_i2i(tmp_path / "m")), FAST)
    assert result.tensors and all(i2i.TimmMAEI2I(TINY_MAE).part_of(n) == "encoder" for n in result.tensors)
    assert result.info["changed_parts"] == ["encoder"] and result.info["steps"] == 3
    assert list(result.trace.columns[:5]) == ["step", "lr", "loss", "retain_loss", "forget_loss"]
    after = i2i.load_i2i(tmp_path / "m", delta=result.tensors)
    before = i2i.load_i2i(tmp_path / "m")
    dec_a, dec_b = after.named_part("decoder"), before.named_part("decoder")
    assert dec_a and all(torch.equal(dec_a[n], dec_b[n]) for n in dec_b)
    enc_a, enc_b = after.named_part("encoder"), before.named_part("encoder")
    assert any(not torch.equal(enc_a[n], enc_b[n]) for n in enc_b)
    # the full-model baselines do move the decoder; RANDOM ENCODER does not
    full = get_method("noisy_label", "i2i").run(context(i2i.load_i2i(tmp_path / "m")), FAST)
    assert full.info["changed_parts"] == ["decoder", "encoder"]
    enc_only = get_method("random_encoder", "i2i").run(context(i2i.load_i2i(tmp_path / "m")), FAST)
    assert enc_only.info["changed_parts"] == ["encoder"]
    with pytest.raises(UnlearnflowError, match="encoder only"):
        get_method("li", "i2i").run(context(), {**FAST, "train": "full"})


def test_unlearning_is_reproducible_and_unknown_params_are_named():
    a = get_method("li", "i2i").run(context(), FAST)
    b = get_method("li", "i2i").run(context(), FAST)
    assert a.tensors.keys() == b.tensors.keys() and all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    with pytest.raises(UnlearnflowError, match="unknown params \\['forget_alpah'\\]"):
        get_method("li", "i2i").run(context(), {**FAST, "forget_alpah": 1.0})


# -------------------------------------------------------------- adapters
def test_a_diffusers_unet_checkpoint_through_the_interface(tmp_path):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=16,
        in_channels=4,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    unet.save_pretrained(tmp_path / "unet")
    out = i2i.model_files(tmp_path / "model")
    import_i2i({}, {k: str(v) for k, v in out.items()}, {"adapter": "diffusers_unet", "checkpoint": str(tmp_path / "unet"), "model_cfg": {}})
    model = i2i.load_i2i(tmp_path / "model")
    assert model.adapter == "diffusers_unet" and model.image_size == 16
    x = i2i.to_float(images(2, 3))
    m = i2i.batch_mask(TASKS[1], 2, 16)
    with torch.no_grad():
        z = model.encode(x, m)
        y = model.decode(z)
        ref = unet(torch.cat([i2i.hide(x * 2 - 1, m), m], 1), 0).sample
    assert isinstance(z, tuple) and len(z) == 1 + 1 + 2 * 1 + 1  # mid, conv_in, per block: resnet (+ downsampler)
    assert torch.allclose(y, ((ref + 1) / 2).clamp(0, 1), atol=1e-5)
    parts = {model.part_of(n) for n, _ in model.named_parameters() if "time_embedding" in n}
    assert parts == {"frozen"}
    assert model.part_of("unet.down_blocks.0.resnets.0.conv1.weight") == "encoder"
    assert model.part_of("unet.up_blocks.1.resnets.0.conv1.weight") == "decoder"
    info = json.loads(out["info"].read_text())
    assert info["source"] == "checkpoint" and info["n_params"]["encoder"] > 0 and info["n_params"]["decoder"] > 0
    # unlearning through the adapter touches the encoder only
    ctx = I2IContext(model=model, forget=images(4, 1), retain=images(4, 2), tasks=TASKS)
    result = get_method("li", "i2i").run(ctx, FAST)
    assert {model.part_of(n) for n in result.tensors} == {"encoder"}


def test_an_official_mae_checkpoint_through_the_interface(tmp_path):
    src = tiny_model(seed=3)
    state = {}
    for k, v in src.state_dict().items():
        state[k.split(".", 1)[1]] = v  # MAE's layout: encoder keys bare, decoder_* keys
    state["mask_token"] = torch.zeros(1, 1, 16)
    torch.save({"model": state}, tmp_path / "mae.pth")
    out = i2i.model_files(tmp_path / "model")
    import_i2i({}, {k: str(v) for k, v in out.items()}, {"adapter": "timm_mae", "checkpoint": str(tmp_path / "mae.pth"), "model_cfg": TINY_MAE})
    model = i2i.load_i2i(tmp_path / "model")
    x = i2i.to_float(images(2, 4))
    m = i2i.batch_mask(TASKS[2], 2, 16)
    with torch.no_grad():
        assert torch.equal(model(x, m), src(x, m))
    # a checkpoint that does not fit names the file and the keys
    del state["decoder_pred.weight"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(InputFileError, match="bad.pth.*missing \\['decoder.decoder_pred.weight'\\]"):
        i2i.TimmMAEI2I.import_checkpoint(tmp_path / "bad.pth", TINY_MAE)


def test_the_masked_pixels_never_reach_the_encoder():
    model = tiny_model()
    x = i2i.to_float(images(2, 5))
    m = i2i.batch_mask(TASKS[0], 2, 16)
    y = x.clone()
    y[m.bool().expand_as(x)] = torch.rand(int(m.sum().item()) * 3)
    with torch.no_grad():
        assert torch.equal(model.encode(x, m), model.encode(y, m))


# ------------------------------------------------------------------ DAG
def i2i_config(clip_dir) -> dict:
    cfg = small_config()
    cfg["i2i"] = {
        "model_cfg": {"image_size": 32, "patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2, "decoder_dim": 16, "decoder_depth": 1},
        "forget_classes": ["ball", "crate"],
        "retain_classes": ["pyramid", "star"],
        "data": {"train_per_class": 8, "test_per_class": 4, "proxy_size": 8},
        "train": {"epochs": 1, "batch_size": 16},
        "run_methods": ["li"],
        "methods": {"li": {"max_steps": 2, "batch_size": 8}},
        "eval": {"features": {"kind": "clip", "dir": str(clip_dir)}, "is_splits": 2},
    }
    return cfg


def test_the_i2i_branch_of_the_dag_end_to_end(workflow, tmp_path_factory):
    import open_clip

    from unlearnflow.models.clip import save_clip, tiny_config

    clip_cfg = tiny_config({"embed_dim": 16, "vision_cfg": {"width": 32, "layers": 1, "head_width": 16, "patch_size": 8}, "text_cfg": {"width": 32, "heads": 2, "layers": 1}})
    clip_dir = tmp_path_factory.mktemp("clip") / "clip"
    torch.manual_seed(0)
    save_clip(open_clip.CLIP(**clip_cfg), clip_cfg, clip_dir, {"source": "test"}, {"size": 32})
    cfg = i2i_config(clip_dir)
    targets = ["results/tables/i2i_unlearning.csv", "results/tables/i2i_tsne.png"]
    workflow.run(*targets, cfg=cfg)
    res = workflow.workdir / "results"
    df = pd.read_csv(res / "tables/i2i_unlearning.csv")
    per_split = ["fid", "is", "clip", "ssim", "psnr", "lpips"]
    assert list(df.columns) == ["method", "task", *(f"{m}_{s}" for s in ("forget", "retain") for m in per_split), "seconds", "provenance"]
    assert df["method"].tolist() == ["original", "li"] * 3
    assert df["task"].tolist() == ["inpaint_1_4"] * 2 + ["inpaint_1_2"] * 2 + ["outpaint"] * 2
    # LPIPS is off by default (its backbone needs a download): empty, and the caption says so
    assert df[["lpips_forget", "lpips_retain"]].isna().all().all()
    assert "LPIPS is off" in (res / "tables/i2i_unlearning.md").read_text()
    values = df.drop(columns=["method", "task", "seconds", "provenance", "lpips_forget", "lpips_retain"])
    assert values.notna().all().all() and (df.loc[df.method == "li", "seconds"] > 0).all()
    assert df["clip_forget"].between(-1, 1).all() and (df["is_forget"] >= 1 - 1e-9).all()
    assert df["ssim_forget"].between(-1, 1).all() and df["psnr_retain"].between(5, 60).all()
    fid_is = pd.read_csv(res / "tables/i2i_fid_is.csv")
    assert list(fid_is.columns) == ["checkpoint", "FID_R", "ISmean_R", "ISstd_R", "FID_F", "ISmean_F", "ISstd_F"]
    assert fid_is["checkpoint"].tolist()[:2] == ["tiny_i2i/original/center_0.25_", "tiny_i2i/original/center_0.5_"]
    orig = df[df.method == "original"].set_index("task").loc[["inpaint_1_4", "inpaint_1_2", "outpaint"]]
    assert fid_is["FID_F"].tolist()[:3] == pytest.approx(orig["fid_forget"].tolist(), abs=0.006)  # the table rounds to 2 places
    assert fid_is["ISmean_R"].tolist()[:3] == pytest.approx(orig["is_retain"].tolist(), abs=0.006)
    clip = pd.read_csv(res / "tables/i2i_clip_cosine.csv")
    assert list(clip.columns) == ["checkpoint", "CLIP_R", "CLIP_F"]
    # forget / retain sets by class, the proxy pool, the delta: encoder tensors only
    split = json.loads((res / "data/i2i/split.json").read_text())
    assert split["counts"] == {"forget": 16, "retain": 16, "test_forget": 8, "test_retain": 8, "proxy": 8}
    delta, meta = load_tensors(res / "unlearn_i2i/tiny_i2i/li/delta.safetensors")
    assert delta and all(k.startswith("encoder.") for k in delta) and meta["method"] == "li"
    record = json.loads((res / "eval_i2i/tiny_i2i/li.json").read_text())
    assert record["features"] == "clip image tower" and record["images"] == {"forget": 8, "retain": 8}
    assert (res / "eval_i2i/tiny_i2i/base_grid.png").stat().st_size > 0
    assert (workflow.workdir / "logs/unlearn_i2i/tiny_i2i/li.log").read_text()

    # a new forget_alpha reruns li's unlearning and evaluation and the tables, nothing else
    from test_workflow import job_counts

    cfg2 = copy.deepcopy(cfg)
    cfg2["i2i"]["methods"]["li"]["forget_alpha"] = 0.5
    _, out = workflow.run(*targets, "-n", cfg=cfg2)
    assert job_counts(out) == {"unlearn_i2i": 1, "evaluate_i2i": 1, "i2i_table": 1, "i2i_tsne": 1}

    # every row resolves to its record; evaluation-only keys rerun no unlearning
    provenance = json.loads((res / "tables/i2i_unlearning.provenance.json").read_text())
    for _, row in df.iterrows():
        record = provenance[row["provenance"]]
        assert record["rule"] == "evaluate_i2i" and record["feature_net"]["features"] == "clip image tower"
        assert (record["unlearn"] is None) == (row["method"] == "original")
    for key, value in (("is_splits", 3), ("batch_size", 64), ("grid", 4), ("composite", True)):
        cfg3 = copy.deepcopy(cfg)
        cfg3["i2i"]["eval"][key] = value
        _, out = workflow.run(*targets, "-n", cfg=cfg3)
        counts = job_counts(out)
        assert counts.get("evaluate_i2i") == 2 and "unlearn_i2i" not in counts, (key, counts)
    _, out = workflow.run(*targets, "-n", cfg=cfg | {"seeds": {"eval": 1}})
    assert job_counts(out) == {"i2i_tsne": 1}

    # LPIPS on a local backbone file (a stand-in: torchvision's AlexNet
    # weights cannot be fetched here): only the evaluations and tables rerun
    torch.manual_seed(0)
    backbone = tmp_path_factory.mktemp("lpips") / "alexnet.pth"
    torch.save(torchvision.models.alexnet().state_dict(), backbone)
    cfg4 = copy.deepcopy(cfg)
    cfg4["i2i"]["eval"]["lpips"] = {"enabled": True, "backbone": str(backbone)}
    _, out = workflow.run(*targets, cfg=cfg4)
    assert job_counts(out) == {"evaluate_i2i": 2, "i2i_table": 1, "i2i_tsne": 1}
    df4 = pd.read_csv(res / "tables/i2i_unlearning.csv")
    assert df4[["lpips_forget", "lpips_retain"]].notna().all().all() and (df4["lpips_forget"] > 0).all()
    assert df4[["ssim_forget", "psnr_forget"]].equals(df[["ssim_forget", "psnr_forget"]])  # LPIPS changes nothing else
    record = json.loads((res / "eval_i2i/tiny_i2i/li.json").read_text())
    assert record["lpips_network"].startswith("lpips-alex (backbone alexnet.pth, sha256 ")
    assert "LPIPS (alex backbone)" in (res / "tables/i2i_unlearning.md").read_text()
