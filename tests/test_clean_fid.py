"""The in-memory scorers preprocess exactly like clean-fid's ``mode="clean"``:
``FeatureNet.image_features`` (what the t2i and i2i evaluations call) and
``FeatureNet.probs`` (IS) give the same numbers as clean-fid's own folder
loader on the same images saved as PNGs, for Inception (a stand-in
TorchScript file) and for a CLIP tower; torch's bicubic interpolation (the old
path) does not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from inception_stand_in import save_stand_in_inception
from unlearnflow.metrics import images as im
from unlearnflow.models.clip import save_clip, tiny_config

RTOL = 1e-5


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    d = tmp_path_factory.mktemp("inception")
    save_stand_in_inception(d / im.INCEPTION_FILE, grid=16)  # a 16 x 16 grid: resizing shows
    mp = pytest.MonkeyPatch()
    mp.setenv("UNLEARNFLOW_INCEPTION_DIR", str(d))
    try:
        yield im.feature_net("inception")
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def clip_net(tmp_path_factory):
    import open_clip

    torch.manual_seed(0)
    cfg = tiny_config()
    d = tmp_path_factory.mktemp("clip")
    save_clip(open_clip.CLIP(**cfg).eval(), cfg, d, {"source": "test"})
    net = im.feature_net("clip", clip_dir=d)
    assert net.input_size == cfg["vision_cfg"]["image_size"] == 32
    return net


def _random_images(n, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)


def _folder(images_u8, path):
    im.save_pngs(images_u8, path, [f"{i:03d}" for i in range(len(images_u8))])
    return str(path)


def _cleanfid_features(folder, net):
    """clean-fid's own loader, clean mode, on our network: its default resizer
    (299) for Inception, the same resizer at the tower's size otherwise (the
    only way clean-fid takes another size)."""
    from cleanfid.fid import get_folder_features
    from cleanfid.resize import make_resizer

    s = net.input_size
    custom = None if s == 299 else make_resizer("PIL", False, "bicubic", (s, s))
    return get_folder_features(
        folder, model=net, num_workers=0, batch_size=net.batch_size, device=net.device,
        mode="clean", custom_fn_resize=custom, verbose=False,
    ).astype(np.float64)


def _cleanfid_pixels(folder, size):
    """What clean-fid's loader hands the network: ``ResizeDataset`` items
    (its resizer on each uint8 HWC array, then ``ToTensor``), stacked."""
    from glob import glob

    from cleanfid.resize import make_resizer
    from cleanfid.utils import ResizeDataset

    ds = ResizeDataset(sorted(glob(f"{folder}/*.png")), mode="clean")
    if size != 299:
        ds.fn_resize = make_resizer("PIL", False, "bicubic", (size, size))
    return torch.stack([ds[i] for i in range(len(ds))])


def _old_pixels(images_u8, size):
    """The previous preprocessing: torch bicubic with antialias, clamped."""
    x = F.interpolate(images_u8.float(), size=(size, size), mode="bicubic", antialias=True)
    return x.clamp(0, 255)


def _max_rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


# torch's antialiased bicubic is PIL's algorithm (a = -0.5) run in float32,
# so the old path is within a few thousandths of a grey level of clean-fid's
# resizer and within ~1e-6 (relative) in feature space: only exact equality
# tells the two apart, and the new path is exact (same resizer, same batch).
SIZES = [("inception", 32, 32), ("inception", 40, 24), ("clip", 20, 20), ("clip", 48, 40)]


@pytest.mark.parametrize("kind,h,w", SIZES)
def test_pixels_are_cleanfid_clean_mode_bit_for_bit(inception, clip_net, tmp_path, kind, h, w):
    net = inception if kind == "inception" else clip_net
    x = _random_images(4, h, w, seed=h * w)
    ref = _cleanfid_pixels(_folder(x, tmp_path / "set"), net.input_size)
    ours = im.clean_resize(x, net.input_size)
    s = net.input_size
    assert ref.dtype == ours.dtype == torch.float32 and ours.shape == ref.shape == (4, 3, s, s)
    assert torch.equal(ours, ref)
    old = (_old_pixels(x, net.input_size) - ref).abs().max().item()
    print(f"{kind} {h}x{w}: pixels old vs clean-fid max abs {old:.3g}, new 0")
    assert old > 0


@pytest.mark.parametrize("kind,h,w", SIZES)
def test_image_features_equal_cleanfid_get_folder_features(inception, clip_net, tmp_path, kind, h, w):
    net = inception if kind == "inception" else clip_net
    x = _random_images(5, h, w, seed=h + w)
    ours = net.image_features(x)
    ref = _cleanfid_features(_folder(x, tmp_path / "set"), net)
    assert ours.shape == ref.shape and ours.dtype == np.float64
    np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=0)
    np.testing.assert_array_equal(ours, ref)  # exact: same resizer, same batch, same network
    old = net(_old_pixels(x, net.input_size)).cpu().numpy().astype(np.float64)
    print(f"{kind} {h}x{w}: features (max abs / max |ref|) new vs clean-fid {_max_rel(ours, ref):.3g}, "
          f"old vs clean-fid {_max_rel(old, ref):.3g}")
    assert not np.array_equal(old, ref)


def test_inception_probs_use_the_clean_resizer(inception, tmp_path):
    x = _random_images(4, 32, 32, seed=7)
    batch = _cleanfid_pixels(_folder(x, tmp_path / "set"), 299)
    with torch.no_grad():
        ref = inception.classify(batch, None).numpy().astype(np.float64)
        old = inception.classify(_old_pixels(x, 299), None).numpy().astype(np.float64)
    np.testing.assert_array_equal(inception.probs(x), ref)
    assert not np.array_equal(old, ref)


@pytest.mark.parametrize("kind", ["inception", "clip"])
def test_the_resizer_is_skipped_only_where_cleanfid_is_the_identity(inception, clip_net, tmp_path, kind):
    """An S x S image: clean-fid's resizer is a copy (PIL's same-size resize),
    so passing the pixels on as float32 is the same, bit for bit."""
    from cleanfid.resize import make_resizer

    net = inception if kind == "inception" else clip_net
    s = net.input_size
    x = _random_images(3, s, s, seed=s)
    for img in x:
        hwc = img.permute(1, 2, 0).numpy()
        out = make_resizer("PIL", False, "bicubic", (s, s))(hwc)
        assert out.dtype == np.float32 and np.array_equal(out, hwc.astype(np.float32))
    folder = _folder(x, tmp_path / "set")
    assert torch.equal(im.clean_resize(x, s), _cleanfid_pixels(folder, s))
    assert torch.equal(im.clean_resize(x, s), x.float())
    np.testing.assert_array_equal(net.image_features(x), _cleanfid_features(folder, net))
    np.testing.assert_array_equal(net.image_features(x), net(x.float()).cpu().numpy().astype(np.float64))
