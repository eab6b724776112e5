"""Text-to-image: name mapping, scorers (incl. clean-fid's Inception path with
a stand-in file), generation determinism, SLUG's one-tensor delta, SalUn's
untouched non-salient weights, the real from_pretrained path, the DAG."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import small_config, small_synthetic
from inception_stand_in import save_stand_in_inception
from unlearnflow.io import InputFileError, UnlearnflowError
from unlearnflow.metrics import images as im
from unlearnflow.models import diffusion as D
from unlearnflow.models.clip import save_clip, tiny_config
from unlearnflow.tables import MET

MICRO_UNET = {
    **D.TINY_UNET,
    "block_out_channels": [16, 16, 16],
    "attention_head_dim": 4,
    "norm_num_groups": 4,
    "sample_size": 8,
}


# --------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    import open_clip

    torch.manual_seed(0)
    cfg = tiny_config()
    model = open_clip.CLIP(**cfg).eval()
    d = tmp_path_factory.mktemp("clip")
    save_clip(model, cfg, d, {"source": "test"})
    return d


@pytest.fixture(scope="module")
def t2i_dir(clip_dir, tmp_path_factory):
    """A random-init tiny model in the pipeline's folder layout."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from unlearnflow.models.clip import load_clip

    clip = load_clip(clip_dir)
    te, tok = D.hf_text_encoder_from_open_clip(clip.model, clip.tokenizer)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**MICRO_UNET)
    d = tmp_path_factory.mktemp("t2i") / "micro_t2i"
    D.save_t2i(
        {"unet": unet, "scheduler": DDPMScheduler(**D.TINY_SCHEDULER), "text_encoder": te, "tokenizer": tok},
        d,
        {"source": "test", "pixel_unshuffle": 2, "text_encoder_fingerprint": clip.info.get("fingerprint", "")},
    )
    return d


# ----------------------------------------------------------- name mapping
def test_open_clip_names_map_onto_the_hf_text_encoder():
    assert D.open_clip_to_hf_names("transformer.resblocks.1.attn.in_proj_weight", 3) == [
        f"encoder.layers.1.self_attn.{x}_proj.weight" for x in "qkv"
    ]
    assert D.open_clip_to_hf_names("transformer.resblocks.0.mlp.c_fc.bias", 3, "text_model.") == [
        "text_model.encoder.layers.0.mlp.fc1.bias"
    ]
    assert D.open_clip_to_hf_names("positional_embedding", 3) == ["embeddings.position_embedding.weight"]
    assert D.open_clip_to_hf_names("ln_final.weight", 3) == ["final_layer_norm.weight"]
    with pytest.raises(UnlearnflowError, match="not a parameter of the pipeline's text encoder"):
        D.open_clip_to_hf_names("text_projection", 3)
    with pytest.raises(UnlearnflowError, match="not a parameter"):
        D.open_clip_to_hf_names("visual.transformer.resblocks.0.attn.in_proj_weight", 3)
    # Stable Diffusion 2.x drops the last text block: it cannot be edited there
    with pytest.raises(UnlearnflowError, match="block 23 is not used.*23 layers"):
        D.open_clip_to_hf_names("transformer.resblocks.23.ln_1.weight", 23)
    fused = torch.arange(12.0).view(6, 2)
    split = D.open_clip_to_hf({"transformer.resblocks.0.attn.in_proj_weight": fused}, 1)
    assert torch.equal(split["encoder.layers.0.self_attn.k_proj.weight"], fused[2:4])


def test_converted_text_encoder_equals_the_open_clip_tower(clip_dir):
    from unlearnflow.models.clip import load_clip

    clip = load_clip(clip_dir)
    te, tok = D.hf_text_encoder_from_open_clip(clip.model, clip.tokenizer)
    captions = ["Photo of Mira Castell", "A kite image in Vellum style.", "MIRA_CASTELL's new look | Getty"]
    ids = clip.tokenizer(captions)
    hf_ids = tok(captions, padding="max_length", max_length=16, truncation=True, return_tensors="pt").input_ids
    m = clip.model
    with torch.no_grad():
        x = m.ln_final(m.transformer(m.token_embedding(ids) + m.positional_embedding, attn_mask=m.attn_mask))
        h = te(hf_ids).last_hidden_state
    for i in range(len(captions)):
        n = int((ids[i] != 0).sum())  # open_clip pads with 0, HF with end-of-text: compare the real tokens
        assert ids[i][:n].tolist() == hf_ids[i][:n].tolist()
        torch.testing.assert_close(h[i, :n], x[i, :n], rtol=1e-5, atol=1e-5)


def test_slug_delta_is_one_open_clip_tensor_mapped_on_load(t2i_dir, tmp_path):
    from unlearnflow.io import save_tensors

    base = D.load_t2i(t2i_dir)
    name = "transformer.resblocks.1.attn.in_proj_weight"
    new = torch.randn(3 * 64, 64)
    delta = tmp_path / "delta.safetensors"
    save_tensors(delta, {name: new}, {"format": "unlearnflow.delta/1", "naming": "open_clip"})
    edited = D.load_t2i(t2i_dir, delta=delta)
    pre = D.hf_prefix(edited.text_encoder)
    changed = {
        n for (n, a), (_, b) in zip(edited.text_encoder.named_parameters(), base.text_encoder.named_parameters())
        if not torch.equal(a, b)
    }  # fmt: skip
    assert changed == {f"{pre}encoder.layers.1.self_attn.{x}_proj.weight" for x in "qkv"}
    q = dict(edited.text_encoder.named_parameters())[f"{pre}encoder.layers.1.self_attn.q_proj.weight"]
    assert torch.equal(q, new[:64])
    assert all(torch.equal(a, b) for a, b in zip(edited.unet.parameters(), base.unet.parameters()))


# --------------------------------------------------------------- scorers
def _images(n, seed, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 1, 1, generator=g) * 180 + 30
    x = base + torch.randn(n, 3, 16, 16, generator=g) * 20 + shift
    return x.clamp(0, 255).round().to(torch.uint8)


def test_fid_kid_is_and_cosines_on_tiny_sets(clip_dir):
    net = im.feature_net("clip", clip_dir=clip_dir)
    a, b = net.image_features(_images(60, 0)), net.image_features(_images(60, 1))
    c = net.image_features(_images(60, 2, shift=70))
    assert im.fid(a, a) == pytest.approx(0.0, abs=1e-6)
    assert im.fid(a, c) > 2 * im.fid(a, b) > 0
    assert im.kid(a, c) > im.kid(a, b)
    assert im.paired_cosine(a, a) == pytest.approx(1.0)
    k = 5
    uniform = np.full((50, k), 1 / k)
    assert im.inception_score(uniform) == pytest.approx((1.0, 0.0))
    sharp = np.eye(k)[np.arange(50) % k]  # confident and diverse: IS = number of classes
    assert im.inception_score(sharp, splits=5)[0] == pytest.approx(k, rel=1e-6)
    with pytest.raises(UnlearnflowError, match="at least 2 feature rows"):
        im.fid(a[:1], b)


def test_folder_features_match_tensor_features_and_errors_name_the_folder(clip_dir, tmp_path):
    net = im.feature_net("clip", clip_dir=clip_dir)
    imgs = _images(12, 3)
    im.save_pngs(imgs, tmp_path / "set", [f"{i:02d}" for i in range(12)])
    loaded, names = im.load_pngs(tmp_path / "set")
    assert torch.equal(loaded, imgs) and names[0] == "00"
    np.testing.assert_allclose(net.folder_features(tmp_path / "set"), net.image_features(imgs), atol=1e-4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match="empty"):
        net.folder_features(tmp_path / "empty")


def test_inception_path_with_a_stand_in_file(tmp_path, monkeypatch, clip_dir):
    monkeypatch.setenv("UNLEARNFLOW_INCEPTION_DIR", str(tmp_path))
    save_stand_in_inception(tmp_path / im.INCEPTION_FILE)
    net = im.feature_net("inception")
    assert net.name.startswith("inception_v3") and net.input_size == 299
    im.save_pngs(_images(6, 4), tmp_path / "pngs", [str(i) for i in range(6)])
    feats = net.folder_features(tmp_path / "pngs")  # clean-fid's loader and resizer, our stand-in
    assert feats.shape == (6, 2048)
    probs = net.probs(_images(6, 4))
    assert probs.shape == (6, 1008) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    # a truncated download is an error naming the file
    (tmp_path / im.INCEPTION_FILE).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(InputFileError, match=im.INCEPTION_FILE):
        im.feature_net("inception")


# ------------------------------------------------------------ generation
def test_generation_is_deterministic_per_seed(t2i_dir):
    b = D.load_t2i(t2i_dir)
    prompts = ["a photo of Mira Castell", "a photo of a kite", "a photo of a kite"]
    one = D.generate(b, prompts, [7, 7, 8], steps=3)
    two = D.generate(b, prompts, [7, 7, 8], steps=3)
    assert one.dtype == torch.uint8 and one.shape == (3, 3, 16, 16)
    assert torch.equal(one, two)
    assert not torch.equal(one[1], one[2])  # another seed, another image
    alone = D.generate(b, prompts[1:2], [7], steps=3, batch_size=1)  # independent of its batch
    assert (alone[0].int() - one[1].int()).abs().max() <= 1


def test_ancestral_sampler_draws_its_noise_from_each_images_seed(t2i_dir):
    b = D.load_t2i(t2i_dir)
    prompts = ["a photo of Mira Castell", "a photo of a kite", "a photo of a kite"]
    one = D.generate(b, prompts, [7, 7, 8], steps=4, sampler="ddpm")
    assert torch.equal(one, D.generate(b, prompts, [7, 7, 8], steps=4, sampler="ddpm"))
    # another batch, another position: the step noise follows the image's seed
    alone = D.generate(b, prompts[2:], [8], steps=4, sampler="ddpm", batch_size=1)
    assert (alone[0].int() - one[2].int()).abs().max() <= 1
    ddim = D.generate(b, prompts, [7, 7, 8], steps=4)
    assert not torch.equal(one, ddim)  # fresh noise per step changes the picture
    with pytest.raises(UnlearnflowError, match=r"t2i.sampling.sampler: 'euler'"):
        D.generate(b, prompts, [7, 7, 8], steps=4, sampler="euler")
    # what the evaluation, the attacks and the variants script pass to generate
    assert D.sampling_options({"steps": 25, "guidance": 2.0, "sampler": "ddpm"}, steps=4) == {
        "steps": 4, "guidance": 2.0, "batch_size": 64, "sampler": "ddpm"
    }
    assert D.sampling_options({"steps": 25, "guidance": 2.0})["sampler"] == "ddim"


def test_prompt_sets_for_identity_and_style_targets():
    from unlearnflow.generate import prompt_sets

    syn = small_synthetic()
    concepts = {k: syn[k] for k in ("identities", "objects", "styles")}
    ident = prompt_sets({"id": "m", "name": syn["identities"][0], "kind": "identity"}, concepts, seeds=[0, 1])
    assert all(syn["identities"][0] in p for p in ident["forget"]["prompt"])
    assert not any(syn["identities"][0] in p for p in ident["retain"]["prompt"])
    assert len(ident["forget"]) == 2 * ident["forget"]["prompt"].nunique()
    style = syn["styles"][0]
    st = prompt_sets({"id": "s", "name": style, "kind": "style"}, concepts, seeds=[0])
    assert set(st["forget"]["prompt"]) == {f"A {o} image in {style} style." for o in syn["objects"]}
    labels = [json.loads(v) for v in st["retain"]["labels"]]
    assert all(set(lab) == {"style", "object"} and lab["style"] != style for lab in labels)
    with pytest.raises(UnlearnflowError, match="not among the concepts"):
        prompt_sets({"id": "x", "name": "Nobody", "kind": "identity"}, concepts, seeds=[0])


# ----------------------------------------------------------------- SalUn
def test_records_say_how_their_pictures_were_drawn_and_a_table_mixes_none(tmp_path):
    import pandas as pd

    from unlearnflow.stages.t2i import sampling_caption, sampling_of

    table = pd.DataFrame({"seed": [3, 1, 2], "sampler": "ddpm", "steps": 50, "guidance": 3.0})
    how = sampling_of(table, tmp_path / "p.parquet")
    assert how == {"sampler": "ddpm", "steps": 50, "guidance": 3.0, "seeds": [1, 2, 3]}
    assert sampling_caption([{"sampling": how}] * 2) == "pictures by DDPM (ancestral), 50 steps, guidance 3, seeds 1, 2, 3 (3 per prompt)"
    with pytest.raises(UnlearnflowError, match="generated in different ways"):
        sampling_caption([{"sampling": how}, {"sampling": {**how, "sampler": "ddim"}}])
    with pytest.raises(InputFileError, match="several steps values"):
        sampling_of(table.assign(steps=[50, 50, 25]), tmp_path / "p.parquet")
    with pytest.raises(InputFileError, match="rerun generate_t2i"):
        sampling_of(table.drop(columns="sampler"), tmp_path / "p.parquet")
    # a record written before the sampler was recorded is named, not a KeyError
    from unlearnflow.io import write_json
    from unlearnflow.stages.t2i import t2i_table

    write_json(tmp_path / "old.json", {"target": "mira_castell", "method": "base"})
    with pytest.raises(InputFileError, match="old.json.*no 'sampling' entry"):
        t2i_table({"records": [str(tmp_path / "old.json")]}, {}, {"costs": {}})


def test_oversample_pools_match_names_as_forget_sets_do_and_errors_name_the_key():
    from unlearnflow.data.select import Matcher

    def any_name(names):
        return Matcher(names[0], aliases=list(names[1:]))

    captions = ["Vellum painting of a kite", "a photo of a kite", "kite - VELLUM illustration", "Vellumish art", "poster_art"]
    pools = D.oversample_pools(captions, {"styles": 0.4}, {"styles": ["Vellum", "Poster"], "objects": ["kite"]}, any_name)
    # any case, whole words, an underscore a word's end (as name_regex matches a snake-case name)
    assert pools["styles"][0] == 0.4 and pools["styles"][1].tolist() == [0, 2, 4]
    with pytest.raises(UnlearnflowError, match=r"oversample: shares sum to 1.3 > 1"):
        D.oversample_pools(captions, {"styles": 0.6, "objects": 0.7}, {"styles": ["Vellum"], "objects": ["kite"]}, any_name)
    with pytest.raises(UnlearnflowError, match=r"oversample.identities: no training caption names any of \['Mira Castell'\]"):
        D.oversample_pools(captions, {"identities": 0.2}, {"identities": ["Mira Castell"]}, any_name)
    with pytest.raises(UnlearnflowError, match="oversample.styles: no styles concepts"):
        D.oversample_pools(captions, {"styles": 0.2}, {}, any_name)


def test_oversampled_training_batches_hold_the_share_from_the_pool(clip_dir, tmp_path, monkeypatch):
    from unlearnflow.data.select import Matcher

    def any_name(names):
        return Matcher(names[0], aliases=list(names[1:]))
    from unlearnflow.models import clip as C

    # 20 white pictures captioned with a style, 80 black ones without
    images = torch.cat([torch.full((20, 3, 16, 16), 255, dtype=torch.uint8), torch.zeros((80, 3, 16, 16), dtype=torch.uint8)])
    captions = ["a Vellum style kite"] * 20 + ["a photo of a kite"] * 80
    monkeypatch.setattr(C, "load_pairs", lambda tars, size: (images.clone(), list(captions)))
    seen, loss = [], D.noise_loss

    def recording(bundle, x0, ctx, gen, **kw):
        seen.append(int((x0.flatten(1).mean(1) > 0).sum()))
        return loss(bundle, x0, ctx, gen, **kw)

    monkeypatch.setattr(D, "noise_loss", recording)
    common = dict(unet_cfg=MICRO_UNET, steps=6, batch_size=20, lr=1e-3, warmup_steps=0, cond_dropout=0.0, seed=0, threads=1)
    info = D.train_tiny_t2i([], clip_dir, tmp_path / "over", oversample={"styles": 0.5}, concepts={"styles": ["Vellum"]}, matcher=any_name, **common)
    assert len(seen) == 6 and min(seen) >= 10  # 10 from the pool, the rest drawn uniformly
    assert info["train"]["oversample"] == {"styles": {"share": 0.5, "pairs": 20}}
    seen.clear()
    info = D.train_tiny_t2i([], clip_dir, tmp_path / "plain", **common)
    assert len(seen) == 6 and sum(seen) < 6 * 10 and "oversample" not in info["train"]


def test_a_low_resolution_phase_comes_first_at_its_size_and_batch(clip_dir, tmp_path, monkeypatch):
    """train_tiny_t2i(lowres=): its steps on downscaled pictures, its batch,
    then the full-size steps; the record says so; bad settings name the key."""
    from unlearnflow.models import clip as C

    images = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8)
    monkeypatch.setattr(C, "load_pairs", lambda tars, size: (images.clone(), ["a photo of a kite"] * 40))
    seen, loss = [], D.noise_loss

    def recording(bundle, x0, ctx, gen, **kw):
        seen.append((tuple(x0.shape), len(ctx)))
        return loss(bundle, x0, ctx, gen, **kw)

    monkeypatch.setattr(D, "noise_loss", recording)
    common = dict(unet_cfg=MICRO_UNET, steps=3, batch_size=4, lr=1e-3, warmup_steps=0, cond_dropout=0.0, seed=0, threads=1)
    info = D.train_tiny_t2i([], clip_dir, tmp_path / "low", lowres={"steps": 2, "batch_size": 12, "size": 8}, **common)
    # 8 px pictures space-to-depth'd by 2: 12 channels at 4 x 4; then 16 px at 8 x 8
    assert seen == [((12, 12, 4, 4), 12)] * 2 + [((4, 12, 8, 8), 4)] * 3
    assert info["train"]["lowres"] == {"steps": 2, "batch_size": 12, "size": 8} and info["train"]["steps"] == 3
    for bad, match in [({"steps": 2, "batch": 8}, "unknown keys \\['batch'\\]"), ({"steps": 2, "batch_size": 8, "size": 16}, "size a multiple of 8 below the model's 16 px")]:
        with pytest.raises(UnlearnflowError, match=f"lowres: .*{match}"):
            D.train_tiny_t2i([], clip_dir, tmp_path / "bad", lowres=bad, **common)


@pytest.mark.parametrize("prediction", ["sample", "epsilon", "v_prediction"])
def test_min_snr_weights_cap_the_x0_error_weight_at_gamma(t2i_dir, prediction):
    """Hang et al.'s Min-SNR-gamma: in x0-error terms every prediction type
    weighs a sample min(SNR, gamma) / gamma, and noise_loss applies it per sample."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(**{**D.TINY_SCHEDULER, "prediction_type": prediction})
    t = torch.tensor([0, 100, 500, 900, 999])
    ac = sched.alphas_cumprod[t]
    snr = ac / (1 - ac)
    w = D.min_snr_weight(sched, t, 5.0)
    # the x0 error of epsilon's loss is scaled by SNR, of v's by SNR + 1
    in_x0 = {"sample": w, "epsilon": w * snr, "v_prediction": w * (snr + 1)}[prediction]
    torch.testing.assert_close(in_x0, torch.clamp(snr, max=5.0) / 5.0)
    assert in_x0[0] == 1 and in_x0[-1] < 1e-3  # low noise capped, high noise down-weighted

    b = D.load_t2i(t2i_dir)
    x0 = torch.rand(4, *b.latent_shape) * 2 - 1
    ctx = b.encode_prompts(["a kite"] * 4)
    weighted = D.noise_loss(b, x0, ctx, torch.Generator().manual_seed(3), snr_gamma=5.0)
    per = D.noise_loss(b, x0, ctx, torch.Generator().manual_seed(3), reduction="none")
    gen = torch.Generator().manual_seed(3)
    t = torch.randint(0, b.scheduler.config.num_train_timesteps, (4,), generator=gen)
    want = (D.min_snr_weight(b.scheduler, t, 5.0).view(-1, 1, 1, 1) * per).mean()
    torch.testing.assert_close(weighted, want)
    assert not torch.isclose(weighted, per.mean())


def test_timestep_bias_weights_and_the_loss_at_the_drawn_timesteps(t2i_dir):
    """diffusers' timestep bias: the later (noisiest) portion drawn
    ``multiplier`` times as often; noise_loss draws its t from the weights."""
    w = D.timestep_weights(1000, "later", 3.0, 0.25)
    assert torch.isclose(w.sum(), torch.tensor(1.0)) and torch.isclose(w[-1] / w[0], torch.tensor(3.0))
    assert (w[750:] == w[-1]).all() and (w[:750] == w[0]).all()
    assert D.timestep_weights(1000, "earlier", 2.0, 0.5)[:500].sum() > 0.66
    with pytest.raises(UnlearnflowError, match="timestep bias strategy 'middle'"):
        D.timestep_weights(1000, "middle", 2.0, 0.5)

    b = D.load_t2i(t2i_dir)
    x0 = torch.rand(3, *b.latent_shape) * 2 - 1
    ctx = b.encode_prompts(["a kite"] * 3)
    one = torch.zeros(1000)
    one[700] = 1.0  # every sample at t = 700
    got = D.noise_loss(b, x0, ctx, torch.Generator().manual_seed(5), t_weights=one, reduction="none")
    gen = torch.Generator().manual_seed(5)
    t = torch.multinomial(one, 3, replacement=True, generator=gen)
    assert (t == 700).all()
    noise = torch.randn(x0.shape, generator=gen)
    with torch.no_grad():
        pred = b.unet(b.scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=ctx).sample
    torch.testing.assert_close(got.detach(), (pred - D.denoising_target(b.scheduler, x0, noise, t)) ** 2)


def test_ema_copies_are_saved_beside_the_model_and_leave_its_weights_alone(clip_dir, tmp_path, monkeypatch):
    """train_tiny_t2i(ema=[...]): each averaged copy in <out>_ema<i>; the
    model itself is the last weights, bit for bit the run without ema."""
    from unlearnflow.models import clip as C

    images = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8)
    monkeypatch.setattr(C, "load_pairs", lambda tars, size: (images.clone(), ["a photo of a kite"] * 40))
    common = dict(unet_cfg=MICRO_UNET, steps=4, batch_size=4, lr=1e-2, warmup_steps=0, cond_dropout=0.0, seed=0, threads=1)
    D.train_tiny_t2i([], clip_dir, tmp_path / "plain", **common)
    info = D.train_tiny_t2i([], clip_dir, tmp_path / "m", ema=[{"decay": 0.0}, {"power": 0.5}], **common)
    assert info["train"]["ema"] == [{"decay": 0.0}, {"power": 0.5}]
    sd = {name: D.load_t2i(tmp_path / name).unet.state_dict() for name in ("plain", "m", "m_ema0", "m_ema1")}
    k = next(k for k in sd["m"] if k.endswith("weight"))
    assert all(torch.equal(sd["plain"][n], sd["m"][n]) for n in sd["m"])
    for n in sd["m"]:  # decay 0: the last weights (up to s - (s - p)'s rounding)
        torch.testing.assert_close(sd["m_ema0"][n], sd["m"][n])
    assert not torch.equal(sd["m_ema1"][k], sd["m"][k])  # an average of the steps


def test_salun_moves_only_salient_unet_weights(t2i_dir, tmp_path):
    from unlearnflow.data.shards import Sample, write_shard
    from unlearnflow.masks import global_topk_masks, mask_metadata, save_mask
    from unlearnflow.methods.t2i import T2IContext
    from unlearnflow.methods.t2i_salun import pseudo_concept, rename, run, unet_forget_gradients

    rng = np.random.default_rng(0)

    def tar(path, caption):
        import io

        from PIL import Image

        def png():
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, format="PNG")
            return buf.getvalue()

        write_shard(path, [Sample(f"{i:04d}", {"png": png(), "txt": caption.encode()}) for i in range(8)])
        return path

    forget = tar(tmp_path / "forget.tar", "Photo of Mira Castell")
    retain = tar(tmp_path / "retain.tar", "a photo of a kite")
    b = D.load_t2i(t2i_dir)
    grads, batches = unet_forget_gradients(b, forget, batch_size=4, seed=0, guidance=3.0, clip_norm=1.0)
    assert batches == 2
    # each batch's gradient is clipped to norm <= 1 before summing
    assert float(torch.sqrt(sum((g**2).sum() for g in grads.values()))) <= 2.0 + 1e-4
    masks = global_topk_masks({f"unet.{n}": g for n, g in grads.items()}, [0.3], exclude=())
    m, info = masks[0.3]
    save_mask(tmp_path / "mask.safetensors", m, mask_metadata(info, forget, exclude=()))
    concepts = {"identities": ["Mira Castell", "Bram Okafor"], "objects": ["kite"], "styles": []}
    target = {"id": "mira_castell", "name": "Mira Castell", "kind": "identity"}
    assert pseudo_concept(target, concepts, "next") == "Bram Okafor"
    assert rename(["MIRA_CASTELL at the gala"], "Mira Castell", "Bram Okafor") == ["Bram Okafor at the gala"]
    ctx = T2IContext(bundle=b, target=target, concepts=concepts, sampling={}, forget_tar=forget,
                     retain_tar=retain, mask=tmp_path / "mask.safetensors", seed=0)  # fmt: skip
    res = run(ctx, {"steps": 3, "batch_size": 4, "lr": 1e-2})
    base = dict(D.load_t2i(t2i_dir).unet.named_parameters())
    assert res.tensors and all(n.startswith("unet.") for n in res.tensors)
    moved = 0
    for name, t in res.tensors.items():
        keep = m[name]
        b0 = base[name.removeprefix("unet.")]
        assert torch.equal(t[~keep], b0[~keep]), name  # non-salient: bit-identical
        moved += int((t[keep] != b0[keep]).sum())
    assert moved > 0.5 * info["kept"]
    assert res.info["pseudo_concept"] == "Bram Okafor"
    # the pseudo prediction comes from the live model (the reference) or a frozen copy: different updates
    from dataclasses import replace

    frozen = run(replace(ctx, bundle=D.load_t2i(t2i_dir)), {"steps": 3, "batch_size": 4, "lr": 1e-2, "pseudo_target": "frozen"})
    assert frozen.tensors.keys() == res.tensors.keys()
    assert any(not torch.equal(frozen.tensors[n], res.tensors[n]) for n in res.tensors)
    with pytest.raises(UnlearnflowError, match="pseudo_target 'copy'"):
        run(ctx, {"steps": 1, "pseudo_target": "copy"})


def test_salun_mask_gradient_differentiates_the_guided_prediction(t2i_dir, tmp_path):
    """The reference's generate_mask.py: the loss of pred_u + w (pred_c - pred_u)."""
    from unlearnflow.data.shards import Sample, write_shard
    from unlearnflow.methods.t2i_salun import unet_forget_gradients
    from unlearnflow.models.diffusion import denoising_target, to_model_space
    from unlearnflow.models.clip import load_pairs

    rng = np.random.default_rng(1)
    import io

    from PIL import Image

    def png():
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    forget = tmp_path / "forget.tar"
    write_shard(forget, [Sample(f"{i:04d}", {"png": png(), "txt": b"Photo of Mira Castell"}) for i in range(4)])
    b = D.load_t2i(t2i_dir)
    w = 3.0
    grads, batches = unet_forget_gradients(b, forget, batch_size=4, seed=0, guidance=w)
    assert batches == 1
    # by hand: the same draws of t and noise, both branches, the guided combination
    images, captions = load_pairs([forget], b.image_size)
    x0 = to_model_space(b, images)
    gen = torch.Generator().manual_seed(0)
    t = torch.randint(0, b.scheduler.config.num_train_timesteps, (4,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    xt = b.scheduler.add_noise(x0, noise, t)
    with torch.no_grad():
        cond, uncond = b.encode_prompts(captions), b.encode_prompts([""]).expand(4, -1, -1)
    params = dict(b.unet.named_parameters())
    for q in params.values():
        q.requires_grad_(True)
    pred_c = b.unet(xt, t, encoder_hidden_states=cond).sample
    pred_u = b.unet(xt, t, encoder_hidden_states=uncond).sample
    loss = torch.nn.functional.mse_loss(pred_u + w * (pred_c - pred_u), denoising_target(b.scheduler, x0, noise, t))
    want = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
    for n in ("conv_in.weight", "conv_out.weight"):
        torch.testing.assert_close(grads[n], want[n], rtol=1e-3, atol=1e-7)
    # and it is not the unguided gradient
    plain, _ = unet_forget_gradients(D.load_t2i(t2i_dir), forget, batch_size=4, seed=0, guidance=1.0)
    assert not torch.allclose(plain["conv_in.weight"], grads["conv_in.weight"], rtol=1e-2)


# ------------------------------------------------------ the real path
def test_from_pretrained_stable_diffusion_layout_loads_and_generates(clip_dir, tmp_path):
    """A tiny latent Stable Diffusion pipeline saved by diffusers, loaded by
    the real path (export_t2i = from_pretrained of a folder)."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from unlearnflow.models.clip import load_clip

    clip = load_clip(clip_dir)
    te, tok = D.hf_text_encoder_from_open_clip(clip.model, clip.tokenizer)
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[8, 8, 8, 8], norm_num_groups=4,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, sample_size=32,
    )  # fmt: skip
    unet = UNet2DConditionModel(**{**MICRO_UNET, "in_channels": 4, "out_channels": 4, "sample_size": 4})
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
        scheduler=DDPMScheduler(**{**D.TINY_SCHEDULER, "clip_sample": False, "prediction_type": "epsilon"}),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(tmp_path / "sd")
    info = D.export_pretrained(str(tmp_path / "sd"), tmp_path / "exported")
    assert info["pipeline_class"] == "StableDiffusionPipeline" and len(info["fingerprint"]) == 64
    b = D.load_t2i(tmp_path / "exported")
    assert b.vae is not None and b.image_size == 32
    imgs = D.generate(b, ["a photo of a kite"], [0], steps=2)
    assert imgs.shape == (1, 3, 32, 32) and imgs.dtype == torch.uint8
    with pytest.raises(InputFileError, match="cannot load a diffusers pipeline"):
        D.export_pretrained(str(tmp_path / "nowhere"), tmp_path / "x")
    with pytest.raises(InputFileError, match="not a text-to-image model folder"):
        D.load_t2i(tmp_path / "sd_missing")


# ------------------------------------------------------------------ DAG
def test_t2i_dag_end_to_end(workflow):
    """The text-to-image branch on a tiny config: tiny model training, masks,
    SLUG and SalUn, generation, scoring and the table."""
    import pandas as pd
    from safetensors.torch import load_file

    cfg = small_config(
        targets=[{"id": "mira_castell", "name": "Mira Castell", "kind": "identity"}],
        clip={"train": {"epochs": 1, "batch_size": 64}},
        run_methods=["slug"],
        methods={"slug": {"max_layers_per_tower": 1, "max_probes": 2}},
        t2i={
            "unet_cfg": {"block_out_channels": [16, 16, 16], "attention_head_dim": 4, "norm_num_groups": 4},
            "train": {"steps": 3, "batch_size": 8},
            "sampling": {"steps": 2, "seeds": [0]},
            "methods": {
                "slug": {"max_layers": 1, "max_probes": 2, "search_steps": 2, "search_seeds": [5]},
                "salun": {"steps": 2, "batch_size": 4},
            },
            "targets": [{"id": "mira_castell", "name": "Mira Castell", "kind": "identity"}],
            "judge": {"train": {"per_class": {"identities": 4, "objects": 4, "styles": 1}, "epochs": 1, "width": 4}, "min_accuracy": 0},
        },
    )
    workflow.run("results/tables/t2i_unlearning.csv", "results/generate/tiny_t2i/mira_castell/compare.png", cfg=cfg, timeout=1500)
    res = workflow.workdir / "results"
    table = pd.read_csv(res / "tables/t2i_unlearning.csv")
    assert list(table.columns) == [
        "target", "method", "ua", "ira", "cra", "fid", "kid", "is", "clip_score",
        "seconds", "peak_mem_mb", "storage_mb", "feature_net", "search", "provenance",
    ]  # fmt: skip
    assert set(table["method"]) == {"original", "slug", "salun"}
    slug_info = json.loads((res / "unlearn_t2i/tiny_t2i/mira_castell/slug/info.json").read_text())
    verdicts = table.set_index("method")["search"]
    assert verdicts["slug"] == slug_info["status"] and verdicts.drop("slug").isna().all()
    assert table["fid"].notna().all() and (table["ua"].between(0, 100)).all()
    assert (table.loc[table["method"] != "original", "storage_mb"] > 0).all()
    assert len(load_file(res / "unlearn_t2i/tiny_t2i/mira_castell/slug/delta.safetensors")) == 1
    grid = res / "generate/tiny_t2i/mira_castell/salun/forget_grid.png"
    assert grid.stat().st_size > 200
    prompts = pd.read_parquet(res / "generate/tiny_t2i/mira_castell/base/prompts.parquet")
    assert len(list((res / "generate/tiny_t2i/mira_castell/base/retain").glob("*.png"))) == (prompts["set"] == "retain").sum()
    # UA / IRA / CRA are the judge's, its held-out accuracy in the caption,
    # its label of every picture beside the record
    judge = json.loads((res / "models/judge/tiny_judge/judge.json").read_text())
    record = json.loads((res / "eval_t2i/tiny_t2i/mira_castell/base.json").read_text())
    assert record["judge"] == "tiny_judge" and record["judge_kind"] == "train"
    assert record["judge_heldout"] == {d: v["accuracy"] for d, v in judge["heldout"].items()}
    assert {"ua_clip", "ira_clip", "cra_clip"} <= set(record)
    preds = pd.read_parquet(res / "eval_t2i/tiny_t2i/mira_castell/base.predictions.parquet")
    assert len(preds) == len(prompts) and preds["correct"].dtype == bool
    forget = preds[preds["set"] == "forget"]
    assert record["ua"] == pytest.approx(100 - 100 * forget["correct"].mean())
    caption = (res / "tables/t2i_unlearning.md").read_text().splitlines()[0]
    assert "train judge tiny_judge (held-out accuracy %: identity" in caption
    # a search that missed its own criterion is named in the caption
    assert (f"mira_castell slug: {slug_info['status']}" in caption) == (slug_info["status"] not in MET)
    # and how the pictures were drawn: the sampler each generation job
    # recorded (config.yaml's DDPM; the test sets steps and seeds only)
    assert "pictures by DDPM (ancestral), 2 steps, guidance 3, seeds 0 (1 per prompt)" in caption
    assert record["sampling"] == {"sampler": "ddpm", "steps": 2, "guidance": 3.0, "seeds": [0]}
    assert (res / "generate/tiny_t2i/mira_castell/compare.png").stat().st_size > 1000
    provenance = json.loads((res / "tables/t2i_unlearning.provenance.json").read_text())
    for _, row in table.iterrows():
        record = provenance[row["provenance"]]
        assert record["rule"] == "evaluate_t2i" and record["seeds"]["generation"] == [0] and record["feature_net"]["name"]
        assert (record["unlearn"] is None) == (row["method"] == "original")

    # evaluation-only keys (sampling seeds and steps, the feature network)
    # rerun generation and scoring, never the unlearning or the masks
    from test_workflow import job_counts

    for t2i in ({"sampling": {"steps": 3, "seeds": [0]}}, {"sampling": {"steps": 2, "seeds": [0, 1]}},
                {"feature_net": {"kind": "clip", "arch": "x"}}):  # fmt: skip
        cfg2 = copy.deepcopy(cfg)
        cfg2["t2i"].update(t2i)
        _, out = workflow.run("results/tables/t2i_unlearning.csv", "-n", cfg=cfg2)
        counts = job_counts(out)
        assert counts.get("evaluate_t2i") == 3 and not {"unlearn_t2i", "t2i_salun_masks", "pretrain_t2i"} & set(counts), (t2i, counts)
    # a changed judge retrains and rescores everything; SLUG's search judges
    # its probes with it (criterion judge, the default), so SLUG reruns too,
    # SalUn not (with criterion generate the judge is no input of SLUG's:
    # test_the_plan_wires_inputs_and_costs_from_the_table)
    cfg2 = copy.deepcopy(cfg)
    cfg2["t2i"]["judge"] = {**cfg["t2i"]["judge"], "train": {**cfg["t2i"]["judge"]["train"], "epochs": 2}}
    _, out = workflow.run("results/tables/t2i_unlearning.csv", "-n", cfg=cfg2)
    counts = job_counts(out)
    assert counts.get("train_judge") == 1 and counts.get("evaluate_t2i") == 3, counts
    assert counts.get("unlearn_t2i") == counts.get("generate_t2i") == 1 and not {"t2i_salun_masks", "pretrain_t2i"} & set(counts), counts
    assert "results/unlearn_t2i/tiny_t2i/mira_castell/slug/info.json" in out

    # the robustness table: every attack on every model of both families
    cfg_att = copy.deepcopy(cfg)
    cfg_att["attacks"] = {
        "clip": {"soft_prompt": {"steps": 5}, "relearn": {"steps": 2, "eval_at": [0, 2]}},
        "t2i": {"prompt_search": {"iterations": 1, "timesteps": 2},
                "relearn": {"steps": 2, "pairs": 4, "batch_size": 2, "eval_at": [0, 2]}},
    }  # fmt: skip
    workflow.run("results/tables/robustness.csv", cfg=cfg_att, timeout=1200)
    rob = pd.read_csv(res / "tables/robustness.csv")
    t2i_rows = rob[rob.family == "t2i"]
    assert t2i_rows["method"].tolist() == ["original"] * 3 + ["salun"] * 3 + ["slug"] * 3
    assert t2i_rows["attack"].tolist() == ["paraphrase", "relearn", "prompt_search"] * 3  # first seen in the CLIP rows first
    assert set(rob.loc[rob.family == "clip", "method"]) == {"original", "slug"}
    # before: the unattacked ASR, 100 - UA of the t2i table (relearning's step 0 too)
    ua = table.set_index("method")["ua"]
    for _, r in t2i_rows.iterrows():
        assert r["before"] == pytest.approx(100 - ua[r["method"]], abs=0.01), r.to_dict()
    search = t2i_rows[t2i_rows.attack == "prompt_search"]
    assert (search["after"] >= search["before"]).all()  # post-attack ASR counts the pre-attack successes
    found = pd.read_parquet(res / "attacks/t2i/tiny_t2i/mira_castell/slug.prompts.parquet")
    assert list(found.columns) == ["prompt", "seed", "success", "step", "adversarial_tokens", "adversarial_prompt", "text_roundtrip"]
    forget_rows = prompts[prompts["set"] == "forget"].reset_index(drop=True)
    assert found[["prompt", "seed"]].equals(forget_rows[["prompt", "seed"]])  # in the forget prompts' order
    assert (res / "attacks/t2i/tiny_t2i/mira_castell/slug.grid.png").stat().st_size > 100


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_sampler_recovers_a_one_point_distribution(prediction):
    """With the exact denoiser of a single image c, guided DDIM returns c
    (through pixel_unshuffle), whatever the UNet's parametrisation."""
    import types

    from diffusers import DDPMScheduler

    sched = DDPMScheduler(**{**D.TINY_SCHEDULER, "prediction_type": prediction})
    ab = sched.alphas_cumprod
    image = torch.zeros(1, 3, 8, 8)
    image[:, 0] = 0.5
    image[:, 1, :, :4] = -0.5
    c = torch.nn.functional.pixel_unshuffle(image, 2)

    class ExactUnet(torch.nn.Module):
        config = types.SimpleNamespace(in_channels=12, sample_size=4)

        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, t, encoder_hidden_states=None):
            a = ab[int(t)]
            eps = (x - a.sqrt() * c) / (1 - a).sqrt()
            return types.SimpleNamespace(sample=D.denoising_target(sched, c.expand_as(x), eps, t.expand(len(x))))

    class Text(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, ids):
            return types.SimpleNamespace(last_hidden_state=torch.zeros(len(ids), 4, 8))

    def tok(prompts, **kw):
        return types.SimpleNamespace(input_ids=torch.zeros(len(prompts), 4, dtype=torch.long))

    tok.model_max_length = 4
    b = D.T2IBundle(ExactUnet(), sched, Text(), tok, None, Path("."), {"pixel_unshuffle": 2})
    out = D.generate(b, ["a", "b"], [0, 1], steps=20, guidance=3.0)
    want = ((image + 1) * 127.5).round()
    assert (out.float() - want).abs().max() <= 1


def test_slug_clip_criterion_edits_one_text_layer_by_lambda_times_the_gradient(clip_dir, t2i_dir, tmp_path):
    """criterion: clip runs SLUG's CLIP validation search on the text layers
    the pipeline uses, and returns theta + lambda * g for one of them."""
    import pandas as pd

    from conftest import write_small_eval_sets
    from unlearnflow.gradients import FORMAT
    from unlearnflow.io import save_tensors, write_parquet
    from unlearnflow.methods.slug import edited
    from unlearnflow.methods.t2i import T2IContext
    from unlearnflow.methods.t2i_slug import run
    from unlearnflow.models.clip import load_clip

    clip = load_clip(clip_dir)
    params = dict(clip.model.named_parameters())
    text = ["transformer.resblocks.2.mlp.c_fc.weight", "text_projection", "visual.proj"]
    g = torch.Generator().manual_seed(0)
    grads = {n: torch.randn(params[n].shape, generator=g) for n in text}
    save_tensors(tmp_path / "g.safetensors", grads, {"format": FORMAT, "set": "forget"})
    table = pd.DataFrame({
        "name": text, "tower": ["text", "text", "vision"], "pareto": [True, True, True], "front_rank": [1, 0, 0],
    })  # fmt: skip
    write_parquet(tmp_path / "layers.parquet", table)
    files = write_small_eval_sets(tmp_path, val=2, test=1)
    sets = {s: {"tar": files[f"{s}_val"], "classes": files[f"{s}_classes"]} for s in ("identities", "objects")}
    ctx = T2IContext(
        bundle=D.load_t2i(t2i_dir), target={"id": "m", "name": "Mira Castell", "kind": "identity"},
        concepts={}, sampling={}, clip_dir=clip_dir, grad_forget=tmp_path / "g.safetensors",
        layers=tmp_path / "layers.parquet", val_sets=sets,
    )  # fmt: skip
    res = run(ctx, {"criterion": "clip", "clip_search": {"max_probes": 2, "forget_target": 100.0}})
    # text_projection is not used by the pipeline's encoder, the vision layer is no text layer
    assert list(res.tensors) == ["transformer.resblocks.2.mlp.c_fc.weight"]
    name = "transformer.resblocks.2.mlp.c_fc.weight"
    assert res.info["criterion"] == "clip" and res.info["naming"] == "open_clip" and res.info["lambda"] > 0
    assert torch.equal(res.tensors[name], edited(params[name].detach(), grads[name], res.info["lambda"]))
    with pytest.raises(UnlearnflowError, match="criterion 'pixels'"):
        run(ctx, {"criterion": "pixels"})


SLUG_LAYER = "transformer.resblocks.2.mlp.c_fc.weight"


def slug_search_ctx(clip_dir, t2i_dir, tmp_path):
    """One text layer on the front with a gradient of ones, and the t2i
    context over it: the base tensor and the context (the probe is faked)."""
    import pandas as pd

    from unlearnflow.gradients import FORMAT
    from unlearnflow.io import save_tensors, write_parquet
    from unlearnflow.methods.t2i import T2IContext
    from unlearnflow.models.clip import load_clip

    theta0 = dict(load_clip(clip_dir).model.named_parameters())[SLUG_LAYER].detach()
    save_tensors(tmp_path / "g.safetensors", {SLUG_LAYER: torch.ones_like(theta0)}, {"format": FORMAT, "set": "forget"})
    write_parquet(tmp_path / "layers.parquet",
                  pd.DataFrame({"name": [SLUG_LAYER], "tower": ["text"], "pareto": [True], "front_rank": [0]}))  # fmt: skip
    ctx = T2IContext(
        bundle=D.load_t2i(t2i_dir), target={"id": "m", "name": "Mira Castell", "kind": "identity"},
        concepts={}, sampling={"guidance": 3.0}, clip_dir=clip_dir, grad_forget=tmp_path / "g.safetensors",
        layers=tmp_path / "layers.parquet", val_sets={},
    )  # fmt: skip
    return theta0, ctx


def test_slug_judge_criterion_scores_the_search_pictures_with_the_judge(clip_dir, t2i_dir, tmp_path, monkeypatch):
    """criterion judge: the probe's UA / IRA come from the pipeline's judge
    (as the reference's search uses UnlearnCanvas' classifier), not the CLIP;
    without the judge's file the job names what is missing."""
    from unlearnflow.metrics import judge as J
    from unlearnflow.methods import t2i_slug

    _, ctx = slug_search_ctx(clip_dir, t2i_dir, tmp_path)
    ctx.concepts = {"identities": ["Mira Castell", "Bram Okafor", "Ines Duval"], "objects": ["kite"]}
    monkeypatch.setattr(D, "generate", lambda bundle, prompts, seeds, **kw: torch.zeros(len(prompts), 3, 16, 16, dtype=torch.uint8))
    classes = {"identity": ["Mira Castell", "Bram Okafor", "Ines Duval"], "object": ["kite", "ball"]}
    says = {}  # what the fake judge answers per domain
    judge = J.Judge("fake", "train", classes, lambda x, d: torch.full((len(x),), says[d], dtype=torch.long))
    monkeypatch.setattr(J, "load_judge", lambda path, **kw: judge if Path(path) == tmp_path / "judge.json" else None)
    net = lambda *a, **k: None  # noqa: E731
    from unlearnflow.metrics import images as im

    monkeypatch.setattr(im, "clip_score", lambda *a, **k: 50.0)
    p = {**t2i_slug.DEFAULTS, "criterion": "judge", "search_seeds": [7], "probe_seeds": None, "probe_steps": None}
    ctx.judge = tmp_path / "judge.json"
    probe = t2i_slug.GeneratedProbe(ctx, None, net, p)
    says.update(identity=1, object=0)  # every face read as Bram Okafor, every object as a kite
    m = probe()
    # forget: no picture read as Mira (UA 100); retain: Bram's right, Ines's wrong (IRA 50)
    assert m["ua"] == 100.0 and m["ira"] == 50.0
    says.update(identity=0)
    assert probe()["ua"] == 0.0 and probe()["ira"] == 0.0
    ctx.judge = None
    with pytest.raises(UnlearnflowError, match="criterion judge needs the judge's judge.json"):
        t2i_slug.GeneratedProbe(ctx, None, net, p)


def test_slug_probes_are_drawn_with_the_search_sampler(clip_dir, t2i_dir, tmp_path, monkeypatch):
    """search_sampler is the probes' sampler, cheap probes and the whole set
    alike: null (the default) the evaluation's, or ddim / ddpm by name; a
    sampler generate does not offer is an error naming it."""
    from unlearnflow.metrics import images as im
    from unlearnflow.metrics import judge as J
    from unlearnflow.methods import t2i_slug

    _, ctx = slug_search_ctx(clip_dir, t2i_dir, tmp_path)
    ctx.concepts = {"identities": ["Mira Castell", "Bram Okafor"], "objects": ["kite"]}
    ctx.judge = tmp_path / "judge.json"
    seen = []

    def fake_generate(bundle, prompts, seeds, **kw):
        seen.append((kw["sampler"], kw["steps"], sorted(set(seeds))))
        return torch.zeros(len(prompts), 3, 16, 16, dtype=torch.uint8)

    monkeypatch.setattr(D, "generate", fake_generate)
    classes = {"identity": ["Mira Castell", "Bram Okafor"], "object": ["kite"]}
    judge = J.Judge("fake", "train", classes, lambda x, d: torch.zeros(len(x), dtype=torch.long))
    monkeypatch.setattr(J, "load_judge", lambda path, **kw: judge)
    monkeypatch.setattr(im, "clip_score", lambda *a, **k: 50.0)
    p = {**t2i_slug.DEFAULTS, "search_seeds": [7, 8], "probe_seeds": 1, "probe_steps": 2, "search_steps": 3}
    # null (the default): the context's sampler, DDIM where it names none
    for given, context, sampler in ((None, {}, "ddim"), (None, {"sampler": "ddpm"}, "ddpm"),
                                    ("ddim", {"sampler": "ddpm"}, "ddim"), ("ddpm", {}, "ddpm")):  # fmt: skip
        seen.clear()
        ctx.sampling = {"guidance": 3.0, **context}
        probe = t2i_slug.GeneratedProbe(ctx, None, None, {**p, "search_sampler": given})
        probe(full=False)
        probe()
        # forget and retain pictures: two calls per probe
        assert seen == [(sampler, 2, [7])] * 2 + [(sampler, 3, [7, 8])] * 2, (given, context)
    with pytest.raises(UnlearnflowError, match=r"search_sampler 'euler' is not one of \['ddim', 'ddpm'\]"):
        t2i_slug.GeneratedProbe(ctx, None, None, {**p, "search_sampler": "euler"})


def test_slug_generate_search_keeps_theta0_when_the_base_already_forgets(clip_dir, t2i_dir, tmp_path, monkeypatch):
    """If the base model already meets ua_target on the search prompts, the
    search has nothing to find: SLUG says so and stores theta(0) (an exact
    no-op), instead of a bisection shrunk toward a step of ~0."""
    from unlearnflow.methods import t2i_slug

    name = SLUG_LAYER
    theta0, ctx = slug_search_ctx(clip_dir, t2i_dir, tmp_path)
    calls = []

    class Probe:  # the base scores UA 80 on the search prompts; an edit would score 100
        cheap = False

        def __init__(self, *a, **k):
            pass

        def __call__(self, layer=None, tensor=None, full=True):
            calls.append(layer)
            return {"ua": 80.0 if layer is None else 100.0, "ira": 50.0, "clip_score": 60.0}

    monkeypatch.setattr(t2i_slug, "GeneratedProbe", Probe)
    res = t2i_slug.run(ctx, {"ua_target": 75.0})
    assert res.info["status"] == "base already forgets" and res.info["lambda"] == 0.0 and calls == [None]
    assert torch.equal(res.tensors[name], theta0)
    res = t2i_slug.run(ctx, {"ua_target": 90.0, "max_probes": 3})  # a target above the base: a real search
    assert res.info["status"] == "forgets within budget" and res.info["lambda"] > 0 and len(calls) > 2


def test_slug_generate_search_validates_the_cheap_probes_choice(clip_dir, t2i_dir, tmp_path, monkeypatch):
    """Cheap probes (fewer seeds and steps) choose a step; the whole search
    set then validates it, and where the step does not forget there, the
    search goes on at the whole set: the stored step forgets at the whole
    set, not only on the cheap probes."""
    from unlearnflow.methods import t2i_slug

    name = SLUG_LAYER
    theta0, ctx = slug_search_ctx(clip_dir, t2i_dir, tmp_path)
    calls = []

    class Probe:  # forgets from lambda 1 on the cheap probes, from lambda 3 on the whole set
        cheap = True

        def __init__(self, *a, **k):
            pass

        def __call__(self, layer=None, tensor=None, full=True):
            lam = 0.0 if tensor is None else float((tensor.float() - theta0.float()).mean())
            calls.append((full, lam))
            return {"ua": 100.0 if lam >= (3.0 if full else 1.0) else 20.0, "ira": 50.0, "clip_score": 60.0}

    monkeypatch.setattr(t2i_slug, "GeneratedProbe", Probe)
    res = t2i_slug.run(ctx, {"ua_target": 90.0, "max_probes": 14, "max_refine": 4, "bracket_tol": 0.05})
    info, trace = res.info, res.trace
    assert 1.0 <= info["probe_lambda"] < 1.1  # the cheap search's smallest forgetting step
    assert info["status"] == "forgets within budget" and 3.0 <= info["lambda"] < 4.5
    assert set(trace["phase"]) == {"probe", "validate"}
    assert (trace.loc[trace["phase"] == "validate", "lam"].max()) >= 3.0
    assert sum(1 for full, _ in calls if full) == 1 + info["validation_probes"]  # the base, then validation only
    assert torch.allclose(res.tensors[name], t2i_slug.edited(theta0, torch.ones_like(theta0), info["lambda"]))
    # with no refinement left, the validated failure is reported as such
    res = t2i_slug.run(ctx, {"ua_target": 90.0, "max_probes": 14, "max_refine": 0, "bracket_tol": 0.05})
    assert res.info["status"] == "does not forget" and res.info["probe_status"] == "forgets within budget"


def test_slug_t2i_layer_choice_deepest_is_the_references_and_rank_the_tables():
    import pandas as pd

    from unlearnflow.io import UnlearnflowError
    from unlearnflow.methods.t2i_slug import text_front_layers

    table = pd.DataFrame({
        "name": ["transformer.resblocks.0.attn.out_proj.weight", "transformer.resblocks.1.mlp.c_proj.weight",
                 "transformer.resblocks.1.ln_2.weight", "text_projection", "transformer.resblocks.1.mlp.c_fc.weight",
                 "visual.conv1.weight"],
        "tower": ["text", "text", "text", "text", "text", "vision"],
        "pareto": [True, True, True, True, False, True],
        "front_rank": [0, 2, 1, 3, -1, 0],
    })  # fmt: skip
    # the deepest block layer of the front, layer norms and non-front layers left out (a6_uncanvas.py)
    assert text_front_layers(table, 2, 1, "deepest") == ["transformer.resblocks.1.mlp.c_proj.weight"]
    assert text_front_layers(table, 2, 2, "deepest")[1] == "transformer.resblocks.0.attn.out_proj.weight"
    assert text_front_layers(table, 2, 1, "rank") == ["transformer.resblocks.0.attn.out_proj.weight"]
    with pytest.raises(UnlearnflowError, match="layer_choice 'widest'"):
        text_front_layers(table, 2, 1, "widest")


def test_slug_generate_search_falls_back_to_the_whole_set_when_the_cheap_base_forgets(clip_dir, t2i_dir, tmp_path, monkeypatch):
    """If the base already meets ua_target on the cheap probes (but not on the
    whole search set), every cheap probe would 'forget' and the bisection
    would shrink the step toward 0: the search runs at the whole set then."""
    from unlearnflow.methods import t2i_slug

    theta0, ctx = slug_search_ctx(clip_dir, t2i_dir, tmp_path)
    calls = []

    class Probe:  # cheap probes: always UA 100; the whole set: forgets from lambda 2
        cheap = True
        seeds, steps = {"probe": [0]}, {"probe": 8}

        def __init__(self, *a, **k):
            pass

        def __call__(self, layer=None, tensor=None, full=True):
            lam = 0.0 if tensor is None else float((tensor.float() - theta0.float()).mean())
            calls.append(full)
            return {"ua": 100.0 if not full or lam >= 2.0 else 20.0, "ira": 50.0, "clip_score": 60.0}

    monkeypatch.setattr(t2i_slug, "GeneratedProbe", Probe)
    res = t2i_slug.run(ctx, {"ua_target": 90.0, "max_probes": 12})
    assert res.info["probes_at"].startswith("the whole search set (the cheap")
    assert res.info["status"] == "forgets within budget" and 2.0 <= res.info["lambda"] < 2.5
    assert calls.count(False) == 1 and set(res.trace["phase"]) == {"probe"}  # one cheap call: the base


# ------------------------------------------------------------------ attacks
def counting_judge(succeed_from_call: int, rows: set):
    """A judge that labels the pictures of ``rows`` the target from its
    ``succeed_from_call``-th call on (the attack's bookkeeping, not its power)."""
    from unlearnflow.metrics.judge import Judge

    calls = []

    def predict(images, domain):
        calls.append(images.clone())
        hit = len(calls) >= succeed_from_call
        return torch.tensor([0 if hit and i in rows else 1 for i in range(len(images))])

    return Judge("counting", "test", {"identity": ["Mira Castell", "Bram Okafor"]}, predict), calls


def test_prompt_search_bookkeeping_and_determinism(t2i_dir):
    import pandas as pd

    from unlearnflow.attacks import t2i as attacks

    bundle = D.load_t2i(t2i_dir)
    target = {"id": "mira", "name": "Mira Castell", "kind": "identity"}
    rows = pd.DataFrame({"prompt": ["a photo of Mira Castell", "Portrait of Mira Castell"], "seed": [0, 1]})
    reference = D.generate(bundle, list(rows["prompt"]), [0, 1], steps=2)
    params = attacks.PROMPT_SEARCH_DEFAULTS | {"timesteps": 2, "iterations": 2}
    sampling = {"steps": 2, "guidance": 3.0}
    judge, calls = counting_judge(2, {0})
    results, pictures, trace = attacks.prompt_search(bundle, judge, target, rows, reference, params, sampling, seed=0)
    assert len(calls) == 2 and [t["step"] for t in trace] == [2, 4]  # the judge after each timestep
    assert [t["timestep"] for t in trace] == attacks.search_timesteps(2, 1000) == [250, 750]
    assert [r["success"] for r in results] == [True, False] and [r["step"] for r in results] == [4, -1]
    assert pictures.shape == reference.shape and pictures.dtype == torch.uint8
    # a row keeps the picture of its success; a row that never succeeds, its last
    assert torch.equal(pictures[0], calls[1][0]) and torch.equal(pictures[1], calls[-1][1])
    tokens = [json.loads(r["adversarial_tokens"]) for r in results]
    special = {bundle.tokenizer.bos_token_id, bundle.tokenizer.eos_token_id}
    assert all(len(t) == 3 and not special & set(t) for t in tokens)
    assert all(r["adversarial_prompt"].endswith(p) for r, p in zip(results, rows["prompt"]))
    again, _, _ = attacks.prompt_search(bundle, counting_judge(2, {0})[0], target, rows, reference, params, sampling, seed=0)
    assert again == results  # deterministic for its seed
    other, _, _ = attacks.prompt_search(bundle, counting_judge(2, {0})[0], target, rows, reference, params, sampling, seed=1)
    assert [r["adversarial_tokens"] for r in other] != [r["adversarial_tokens"] for r in results]
    # PEZ, the option: the same bookkeeping, and a row's first success is kept
    pez, _, _ = attacks.prompt_search(bundle, counting_judge(1, {1})[0], target, rows, reference, params | {"optimizer": "pez"}, sampling, seed=0)
    assert [r["step"] for r in pez] == [-1, 2] and all(len(json.loads(r["adversarial_tokens"])) == 3 for r in pez)
    with pytest.raises(UnlearnflowError, match="optimizer 'adam'"):
        attacks.prompt_search(bundle, judge, target, rows, reference, params | {"optimizer": "adam"}, sampling, seed=0)


def test_states_bundle_generates_what_the_prompt_generates(t2i_dir):
    from unlearnflow.attacks.t2i import StatesBundle

    bundle = D.load_t2i(t2i_dir)
    prompt = "a photo of Mira Castell"
    with torch.no_grad():
        states = bundle.text_encoder(bundle.tokens([prompt])).last_hidden_state[0]
    direct = D.generate(bundle, [prompt], [3], steps=2)
    via = D.generate(StatesBundle(bundle, {"key": states}), ["key"], [3], steps=2)
    assert torch.equal(direct, via)


def test_paraphrases_name_the_target_otherwise():
    import pandas as pd

    from unlearnflow.attacks.t2i import paraphrase_sets

    forget = pd.DataFrame({"prompt": ["A ball image in Vellum style."], "seed": [0], "labels": ['{"object": "ball", "style": "Vellum"}']})
    variants = paraphrase_sets({"name": "Vellum", "kind": "style"}, forget)
    assert variants["caption_1"] == ["Vellum painting of a ball"] and variants["caption_2"] == ["ball in the style of Vellum"]
    assert variants["lower"] == ["A ball image in vellum style."] and "surname" not in variants
    ident = pd.DataFrame({"prompt": ["Portrait of Mira Castell"], "seed": [0], "labels": ['{"identity": "Mira Castell"}']})
    variants = paraphrase_sets({"name": "Mira Castell", "kind": "identity"}, ident)
    assert variants["surname"] == ["Portrait of Castell"] and variants["caption_1"] == ["Mira Castell at the premiere"]


def test_simplex_projection_is_the_euclidean_projection():
    from unlearnflow.attacks.t2i import simplex_projection

    g = torch.Generator().manual_seed(0)
    v = torch.randn(4, 7, generator=g)
    p = simplex_projection(v)
    assert torch.allclose(p.sum(-1), torch.ones(4), atol=1e-6) and (p >= 0).all()
    # the projection is the closest point: no other point of the simplex is nearer
    others = torch.distributions.Dirichlet(torch.ones(7)).sample((2000,))
    for row, proj in zip(v, p):
        assert (others - row).norm(dim=-1).min() >= (proj - row).norm() - 1e-6
    on = torch.tensor([[0.2, 0.3, 0.5]])
    assert torch.allclose(simplex_projection(on), on)  # a point of the simplex stays
