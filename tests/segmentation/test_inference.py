"""UNet inference options: test-time flips and the one-blob post-processing; training augmentation."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn
from torchvision import tv_tensors

from segdet.data.transforms import seg_transforms
from segdet.segmentation.evaluate import largest_blob, predict_masks


def test_largest_blob_keeps_the_biggest_region_and_fills_its_holes():
    mask = np.zeros((20, 20), bool)
    mask[2:12, 2:12] = True  # the lesion, 100 px ...
    mask[5:8, 5:8] = False  # ... with a 9 px hole
    mask[15:18, 15:18] = True  # a 9 px speck
    mask[0, 19] = True  # a 1 px speck
    out = largest_blob(mask)
    expected = np.zeros((20, 20), bool)
    expected[2:12, 2:12] = True
    np.testing.assert_array_equal(out, expected)


def test_largest_blob_joins_diagonal_neighbours_and_keeps_an_empty_mask_empty():
    mask = np.zeros((6, 6), bool)
    mask[1, 1] = mask[2, 2] = mask[3, 3] = True  # one 8-connected region of 3 px
    mask[5, 0] = True
    assert largest_blob(mask).sum() == 3 and largest_blob(mask)[2, 2]
    assert not largest_blob(np.zeros((6, 6), bool)).any()


class _LeftHalf(nn.Module):
    """Lesion logit +1 on the left half of the input, -3 on the right: not flip-invariant."""

    def forward(self, x):
        w = x.shape[-1]
        lesion = torch.ones(x.shape[0], 1, *x.shape[-2:])
        lesion[..., w // 2 :] = -3.0
        return torch.cat([torch.zeros_like(lesion), lesion], 1)


def test_tta_averages_the_probabilities_of_the_flipped_images():
    image = tv_tensors.Image(torch.zeros(3, 8, 8, dtype=torch.uint8))
    plain = predict_masks(_LeftHalf(), [image], 8, torch.device("cpu"))[0]
    assert plain[:, :4].all() and not plain[:, 4:].any()
    # with flips: the horizontal flips put every pixel on the other side once in two, so each pixel
    # averages p = sigmoid(1) = 0.731 twice and sigmoid(-3) = 0.047 twice: 0.389, background everywhere
    tta = predict_masks(_LeftHalf(), [image], 8, torch.device("cpu"), tta=True)[0]
    assert not tta.any()


def test_tta_of_a_flip_invariant_model_equals_the_plain_prediction():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 2, 3, padding=1)
    with torch.no_grad():  # a symmetric kernel commutes with both flips
        k = torch.randn(2, 3, 3, 3)
        conv.weight.copy_((k + k.flip(-1) + k.flip(-2) + k.flip(-1, -2)) / 4)
    image = tv_tensors.Image(torch.randint(0, 255, (3, 16, 16), dtype=torch.uint8))
    plain = predict_masks(conv, [image], 16, torch.device("cpu"))[0]
    tta = predict_masks(conv, [image], 16, torch.device("cpu"), tta=True)[0]
    assert 0 < int(plain.sum()) < 256
    assert torch.equal(plain, tta)


def test_postprocess_in_predict_masks_leaves_one_blob():
    class Specks(nn.Module):
        def forward(self, x):
            lesion = -torch.ones(x.shape[0], 1, *x.shape[-2:])
            lesion[..., 2:10, 2:10] = 1.0
            lesion[..., 5, 5] = -1.0
            lesion[..., 14, 14] = 1.0
            return torch.cat([torch.zeros_like(lesion), lesion], 1)

    image = tv_tensors.Image(torch.zeros(3, 16, 16, dtype=torch.uint8))
    raw = predict_masks(Specks(), [image], 16, torch.device("cpu"))[0]
    post = predict_masks(Specks(), [image], 16, torch.device("cpu"), postprocess=True)[0]
    assert int(raw.sum()) == 64 and ndimage.label(raw.numpy())[1] == 2
    assert int(post.sum()) == 64 and post[5, 5] and not post[14, 14]


class _Red(nn.Module):
    """Lesion logit = the normalised red channel, background logit 0: lesion exactly where the image is red."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, :1]], 1)


@pytest.mark.parametrize(("h", "w"), [(40, 72), (72, 40)])
def test_masks_of_non_square_images_come_back_where_the_lesion_is(h, w):
    """Resized (anisotropically) to the network's 24 x 24 input and back: the mask lies on the red rectangle of
    the original image, to within the 1.5 input pixels the two resizes blur (3 to 5 original pixels along the
    longer side, 2 to 3 along the shorter); a swapped height and width, a transposed or shifted resize back would
    put it elsewhere."""
    img = torch.zeros(3, h, w, dtype=torch.uint8)
    top, left = h // 5, w // 2
    img[0, top:top + h // 2, left:left + w // 3] = 255
    truth = np.zeros((h, w), bool)
    truth[top:top + h // 2, left:left + w // 3] = True
    mask = predict_masks(_Red(), [tv_tensors.Image(img)], 24, torch.device("cpu"))[0].numpy()
    assert mask.shape == (h, w)
    ty, tx = math.ceil(1.5 * h / 24), math.ceil(1.5 * w / 24)  # 1.5 input pixels, in original pixels
    box = np.ones((2 * ty + 1, 2 * tx + 1), bool)
    assert mask[ndimage.binary_erosion(truth, box)].all()
    assert not mask[~ndimage.binary_dilation(truth, box)].any()


@pytest.mark.parametrize(("rotate", "scale", "jitter"), [(30.0, 0.0, 0.0), (0.0, 0.3, 0.0), (25.0, 0.2, 0.3)])
def test_augmentation_moves_the_mask_with_the_image(rotate, scale, jitter):
    # the image's red channel is 255 exactly on the lesion: after any geometric augmentation the mask
    # must still cover the bright pixels (colour jitter changes brightness, not where the lesion is)
    img = torch.zeros(3, 64, 64, dtype=torch.uint8)
    img[0, 16:40, 20:44] = 255
    mask = torch.zeros(64, 64, dtype=torch.int64)
    mask[16:40, 20:44] = 1
    tf = seg_transforms(64, True, 0.5, 0.5, rotate=rotate, scale=scale, color_jitter=jitter)
    torch.manual_seed(3)
    moved = 0
    for _ in range(8):
        out_img, out_mask = tf(tv_tensors.Image(img), tv_tensors.Mask(mask))
        assert out_img.dtype == torch.float32 and out_mask.dtype == torch.int64
        assert set(out_mask.unique().tolist()) <= {0, 1}
        red = out_img[0] > out_img[0].max() / 2
        agree = (red == out_mask.bool()).float().mean()
        assert agree > 0.97  # only interpolation edges differ
        moved += not torch.equal(out_mask, mask)
    assert moved >= 6  # the augmentation really changes the geometry


def test_no_augmentation_when_not_training():
    img = tv_tensors.Image(torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.zeros(32, 32, dtype=torch.int64))
    tf = seg_transforms(32, False, rotate=90.0, scale=0.5, color_jitter=1.0)
    out_img, _ = tf(img, mask)
    assert torch.allclose(out_img, img.float() / 255)
