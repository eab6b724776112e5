"""SSIM / PSNR / LPIPS of paired images (image-to-image scores)."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from unlearnflow.io import InputFileError, UnlearnflowError
from unlearnflow.metrics.images import lpips_net, ssim_psnr


def pictures(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth pictures (upsampled noise), as SSIM's window expects structure
    low = torch.rand(n, 3, 8, 8, generator=g)
    return (torch.nn.functional.interpolate(low, size=32, mode="bilinear") * 255).round().to(torch.uint8)


def noisy(x, amount, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (x.float() + amount * torch.randn(x.shape, generator=g)).clamp(0, 255).round().to(torch.uint8)


def test_ssim_psnr_known_values_and_ordering():
    x = pictures()
    assert ssim_psnr(x, x) == {"ssim": 1.0, "psnr": 100.0}  # an exact copy: PSNR capped, not infinite
    y = noisy(x, 8.0)
    # PSNR per image by hand, then averaged
    mse = ((x.float() - y.float()) / 255).pow(2).flatten(1).mean(1)
    assert ssim_psnr(y, x)["psnr"] == pytest.approx(float((10 * torch.log10(1 / mse)).mean()), rel=1e-5)
    a, b = ssim_psnr(noisy(x, 8.0), x), ssim_psnr(noisy(x, 40.0), x)
    assert 0 < b["ssim"] < a["ssim"] < 1 and b["psnr"] < a["psnr"]


def test_paired_metrics_refuse_unpaired_sets():
    x = pictures()
    with pytest.raises(UnlearnflowError, match="differ in shape"):
        ssim_psnr(x, x[:3])


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lpips") / "alexnet.pth"
    torch.save(torchvision.models.alexnet().state_dict(), path)  # a stand-in for torchvision's ImageNet weights
    return path


def test_lpips_on_a_local_backbone(alexnet_file, tmp_path):
    x = pictures()
    net = lpips_net("alex", str(alexnet_file))
    assert net.name.startswith("lpips-alex (backbone alexnet.pth, sha256 ")
    assert net(x, x) == 0.0
    near, far = net(noisy(x, 8.0), x), net(noisy(x, 40.0), x)
    assert 0 < near < far and math.isfinite(far)
    # the file's weights are the ones used: other weights, another distance
    torch.manual_seed(1)
    other = tmp_path / "other.pth"
    torch.save(torchvision.models.alexnet().state_dict(), other)
    assert lpips_net("alex", str(other))(noisy(x, 40.0), x) != pytest.approx(far)


def test_lpips_bad_backbones_are_named(alexnet_file, tmp_path):
    with pytest.raises(InputFileError, match="missing.pth.*no such file"):
        lpips_net("alex", str(tmp_path / "missing.pth"))
    torch.save(torchvision.models.vgg16().state_dict(), tmp_path / "vgg.pth")
    with pytest.raises(InputFileError, match="vgg.pth.*not a torchvision alex state dict"):
        lpips_net("alex", str(tmp_path / "vgg.pth"))
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(InputFileError, match="junk.pth.*not a torch state dict"):
        lpips_net("alex", str(tmp_path / "junk.pth"))
    with pytest.raises(UnlearnflowError, match="squeeze"):
        lpips_net("squeeze", str(alexnet_file))
