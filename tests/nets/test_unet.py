import pytest
import torch
from torchvision import models

from segdet.nets.unet import VARIANTS, ResNetUNet, UNet, build_unet
from segdet.nets.weights import init_from


def test_width_doubles_per_downsampling_and_first_decoder_block_sees_512_for_base_32():
    m = build_unet("unet32")
    convs = [m.inc[0], m.down1[1][0], m.down2[1][0], m.down3[1][0], m.down4[1][0]]
    encoder_out = [m.inc[3].out_channels] + [d[1][3].out_channels for d in (m.down1, m.down2, m.down3, m.down4)]
    assert encoder_out == [32, 64, 128, 256, 256]
    assert [c.in_channels for c in convs] == [3, 32, 64, 128, 256]
    assert m.up1.conv[0].in_channels == 512  # 256 upsampled + 256 skip
    assert [u.conv[3].out_channels for u in (m.up1, m.up2, m.up3, m.up4)] == [128, 64, 32, 32]
    assert m.outc.out_channels == 2


@pytest.mark.parametrize(("variant", "width"), [("unet32", 32), ("unet64", 64), ("unet128", 128)])
def test_variants_scale_the_width(variant, width):
    m = build_unet(variant)
    assert m.base_channel == width and m.inc[0].out_channels == width and m.inc[3].out_channels == width
    assert [d[1][3].out_channels for d in (m.down1, m.down2, m.down3, m.down4)] == [2 * width, 4 * width,
                                                                                    8 * width, 8 * width]
    assert set(VARIANTS) == {"unet32", "unet64", "unet128"}


def test_parameter_count_grows_about_4x_per_width_doubling():
    counts = [sum(p.numel() for p in build_unet(v).parameters()) for v in ("unet32", "unet64")]
    assert 3.8 < counts[1] / counts[0] < 4.1


def test_unknown_variant_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"Wrong UNet variant 'unet48'. Available options are: unet32, unet64, unet128, resnet18"):
        build_unet("unet48")


@pytest.mark.parametrize("size", [(32, 32), (37, 53), (17, 100)])
def test_any_input_size_gives_logits_of_the_same_size(size):
    m = UNet(base_channel=4).eval()
    with torch.no_grad():
        out = m(torch.randn(2, 3, *size))
    assert out.shape == (2, 2, *size)


@pytest.mark.parametrize("size", [(32, 32), (37, 53), (96, 96)])
def test_resnet18_unet_gives_logits_of_the_input_size(size):
    m = build_unet("resnet18", num_classes=3).eval()
    assert isinstance(m, ResNetUNet)
    with torch.no_grad():
        out = m(torch.rand(2, 3, *size))
    assert out.shape == (2, 3, *size)


def test_resnet18_unet_encoder_is_torchvisions_resnet18_without_its_classifier():
    # the encoder's parameters are exactly those of torchvision's ResNet-18 less the fc layer (11.18 M), and the
    # decoder adds what smp's Unet decoder (256, 128, 64, 32, 16) adds: 14.33 M in all, as in docs/benchmarks.md
    m = build_unet("resnet18")
    r = models.resnet18(weights=None)
    enc = sum(p.numel() for p in m.encoder.parameters())
    assert enc == sum(p.numel() for n, p in r.named_parameters() if not n.startswith("fc."))
    assert sum(p.numel() for p in m.parameters()) == 14_328_354


def test_imagenet_resnet18_state_dict_loads_into_the_encoder(tmp_path):
    r = models.resnet18(weights=None)
    torch.nn.init.normal_(r.conv1.weight)  # a value no fresh network has
    torch.save(r.state_dict(), tmp_path / "resnet18.pth")
    m = build_unet("resnet18")
    report = init_from(m, tmp_path / "resnet18.pth", prefixes=("", "encoder."))
    assert report.unexpected == ["encoder.fc.bias", "encoder.fc.weight"] and not report.mismatched
    assert len(report.loaded) == len(r.state_dict()) - 2
    assert torch.equal(m.encoder["conv1"].weight, r.conv1.weight)
    assert all(k.startswith(("decoder.", "head.")) for k in report.missing)


def test_resnet18_unet_normalises_its_input_with_imagenet_statistics():
    # the encoder's first conv sees (x - mean) / std: an image at the ImageNet mean arrives as zeros, one of
    # mean + std as ones (images come in [0, 1], as the segmentation transforms give them)
    m = build_unet("resnet18").eval()
    seen = []
    m.encoder["conv1"].register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    with torch.no_grad():
        m(mean.view(1, 3, 1, 1).expand(1, 3, 32, 32))
        m((mean + std).view(1, 3, 1, 1).expand(1, 3, 32, 32))
    assert torch.allclose(seen[0], torch.zeros(1, 3, 32, 32), atol=1e-6)
    assert torch.allclose(seen[1], torch.ones(1, 3, 32, 32), atol=1e-5)


@pytest.mark.parametrize("size", [(32, 32), (37, 53)])
def test_transposed_upsampling_learns_2x2_up_convolutions_and_keeps_any_input_size(size):
    m = UNet(base_channel=4, upsample="transpose").eval()
    ups = [u.up for u in (m.up1, m.up2, m.up3, m.up4)]
    assert all(isinstance(u, torch.nn.ConvTranspose2d) and u.kernel_size == (2, 2) and u.stride == (2, 2) for u in ups)
    assert [(u.in_channels, u.out_channels) for u in ups] == [(32, 32), (16, 16), (8, 8), (4, 4)]  # base 4
    with torch.no_grad():
        assert m(torch.randn(2, 3, *size)).shape == (2, 2, *size)
    # the learned up-convolutions are the only extra weights: 4 x (c * c * 2 * 2 + c) for c = 32, 16, 8, 4
    extra = sum(c * c * 4 + c for c in (32, 16, 8, 4))
    count = [sum(p.numel() for p in UNet(4, upsample=u).parameters()) for u in ("bilinear", "transpose")]
    assert count[1] - count[0] == extra


def test_unknown_upsampling_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"Wrong UNet upsample 'nearest'. Available options are: bilinear, transpose"):
        build_unet("unet32", upsample="nearest")


def _output_and_grads(model, x):
    out = model(x)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(("variant", "upsample", "size"), [("unet32", "bilinear", (48, 48)),
                                                         ("unet32", "transpose", (37, 53)),
                                                         ("resnet18", "bilinear", (64, 64))])
def test_decoders_skip_the_concatenation_on_a_cpu_with_the_concatenating_networks_outputs_and_gradients(
        monkeypatch, variant, upsample, size):
    # on a CPU in float32 the decoders convolve the upsampled map and the skip separately and sum (faster, no
    # copy into a concatenation); the reference is the same weights run through torch.cat, as on CUDA
    import copy

    from segdet.nets import unet as unet_module

    assert unet_module.split_concat(torch.zeros(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not unet_module.split_concat(torch.zeros(1))  # reduced-precision sums keep the concatenation
    torch.manual_seed(0)
    # eval mode: batch norms on running statistics, so float rounding is not amplified by batch statistics
    model = build_unet(variant, upsample=upsample).to(memory_format=torch.channels_last).eval()
    reference = copy.deepcopy(model)
    x = torch.rand(2, 3, *size).contiguous(memory_format=torch.channels_last)
    out, grads = _output_and_grads(model, x)
    monkeypatch.setattr(unet_module, "split_concat", lambda t: False)
    ref_out, ref_grads = _output_and_grads(reference, x)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        scale = ref_grads[name].abs().max().item()
        assert (g - ref_grads[name]).abs().max().item() <= 1e-4 * scale, name
    assert model.state_dict().keys() == reference.state_dict().keys()
