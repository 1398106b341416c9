import pytest
import torch

from segdet.nets.unet import VARIANTS, UNet, build_unet


def test_width_doubles_per_downsampling_and_first_decoder_block_sees_512_for_base_32():
    m = build_unet("unet32")
    convs = [m.inc[0], m.down1[1][0], m.down2[1][0], m.down3[1][0], m.down4[1][0]]
    encoder_out = [m.inc[3].out_channels] + [d[1][3].out_channels for d in (m.down1, m.down2, m.down3, m.down4)]
    assert encoder_out == [32, 64, 128, 256, 256]
    assert [c.in_channels for c in convs] == [3, 32, 64, 128, 256]
    assert m.up1.conv[0].in_channels == 512  # 256 upsampled + 256 skip
    assert [u.conv[3].out_channels for u in (m.up1, m.up2, m.up3, m.up4)] == [128, 64, 32, 32]
    assert m.outc.out_channels == 2


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variants_scale_the_width(variant):
    m = build_unet(variant)
    assert m.base_channel == VARIANTS[variant] and m.inc[0].out_channels == VARIANTS[variant]


def test_parameter_count_grows_about_4x_per_width_doubling():
    counts = [sum(p.numel() for p in build_unet(v).parameters()) for v in ("unet32", "unet64")]
    assert 3.8 < counts[1] / counts[0] < 4.1


def test_unknown_variant_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"Wrong UNet variant 'unet48'. Available options are: unet32, unet64, unet128"):
        build_unet("unet48")


@pytest.mark.parametrize("size", [(32, 32), (37, 53), (17, 100)])
def test_any_input_size_gives_logits_of_the_same_size(size):
    m = UNet(base_channel=4).eval()
    with torch.no_grad():
        out = m(torch.randn(2, 3, *size))
    assert out.shape == (2, 2, *size)
