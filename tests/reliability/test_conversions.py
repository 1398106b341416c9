"""Inputs that segdet converts rather than refuses, each said once in the log: 0/1 masks, greyscale, palette and
RGBA images, EXIF rotations, CRLF and BOM manifests (YAML 1.1's ``1e-3``: tests/test_config.py)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from segdet.data.datasets import SegmentationDataset
from segdet.data.formats import MAX_PIXELS, FormatError, read_gray, read_rgb
from segdet.data.pairs import Pair, read_manifest, validate_seg
from tests.reliability.test_bad_input import png_bomb


def _pair(tmp_path, name, image: Image.Image, mask: np.ndarray) -> Pair:
    (tmp_path / "i").mkdir(exist_ok=True)
    (tmp_path / "m").mkdir(exist_ok=True)
    img = tmp_path / "i" / f"{name}.png"
    image.save(img)
    lab = tmp_path / "m" / f"{name}_segmentation.png"
    Image.fromarray(mask).save(lab)
    return Pair(str(img), str(lab), f"m.txt:{name}")


def _notes(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("converted on reading")]


def _mask(high: int) -> np.ndarray:
    m = np.zeros((8, 8), np.uint8)
    m[2:5, 3:7] = high
    return m


def test_image_modes_are_read_as_rgb_and_said_once(tmp_path, caplog):
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    grey = rng.integers(0, 255, (8, 8), dtype=np.uint8)
    rgba = np.dstack([colour, np.full((8, 8), 7, np.uint8)])
    pairs = [
        _pair(tmp_path, "grey", Image.fromarray(grey), _mask(255)),
        _pair(tmp_path, "grey2", Image.fromarray(grey), _mask(255)),
        _pair(tmp_path, "rgba", Image.fromarray(rgba, "RGBA"), _mask(255)),
        _pair(tmp_path, "pal", Image.fromarray(colour).quantize(8), _mask(255)),
        _pair(tmp_path, "plain", Image.fromarray(colour), _mask(255)),
    ]
    with caplog.at_level(logging.INFO, logger="segdet.data.pairs"):
        assert validate_seg(pairs, tmp_path) == []
    assert _notes(caplog) == [
        "converted on reading: 2 image(s) are greyscale: read as RGB (the grey value in all three channels)",
        "converted on reading: 1 image(s) use a colour palette: read as RGB",
        "converted on reading: 1 image(s) have an alpha channel: it is dropped (the colour is kept as is)",
    ]
    g = read_rgb(pairs[0].image)
    assert g.shape == (8, 8, 3) and (g == grey[..., None]).all()
    assert (read_rgb(pairs[2].image) == colour).all()  # the alpha channel (7) is dropped, not blended
    palette = np.asarray(Image.open(pairs[3].image).convert("RGB"))
    assert (read_rgb(pairs[3].image) == palette).all()


def test_zero_one_masks_are_read_as_lesion_and_said_once(tmp_path, caplog):
    colour = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    pairs = [_pair(tmp_path, f"a{i}", colour, _mask(1)) for i in range(3)] + [_pair(tmp_path, "b", colour, _mask(255))]
    with caplog.at_level(logging.INFO, logger="segdet.data.pairs"):
        assert validate_seg(pairs, tmp_path) == []
    assert _notes(caplog) == ["converted on reading: 3 mask(s) hold 0/1 rather than 0/255: any value above 0 is lesion"]
    manifest = tmp_path / "m.txt"
    manifest.write_text("".join(f"{p.image} {p.label}\n" for p in pairs))
    ds = SegmentationDataset(manifest, tmp_path)
    for i in (0, 3):  # a 0/1 mask and a 0/255 mask give the same target
        assert ds[i][1].sum().item() == 12 and ds[i][1][2:5, 3:7].all()


def test_exif_rotation_is_ignored_and_said(tmp_path, caplog):
    pixels = np.zeros((6, 10, 3), np.uint8)  # stored 10 wide, 6 high; EXIF 6 = "rotate 90 degrees to display"
    pixels[:, :2] = 255
    img = tmp_path / "i" / "rot.jpg"
    img.parent.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(img, exif=exif, quality=100)
    lab = tmp_path / "m" / "rot_segmentation.png"
    lab.parent.mkdir()
    Image.fromarray(np.zeros((6, 10), np.uint8)).save(lab)
    with caplog.at_level(logging.INFO, logger="segdet.data.pairs"):
        assert validate_seg([Pair(str(img), str(lab), "m.txt:1")], tmp_path) == []  # the mask fits the stored pixels
    assert any("1 image(s) carry an EXIF rotation: it is ignored" in n for n in _notes(caplog))
    assert read_rgb(img).shape == (6, 10, 3)
    assert read_rgb(img)[:, :2].mean() > 200  # the bright columns are where they are stored


@pytest.mark.parametrize("encoding", ["crlf", "bom", "bom+crlf"])
def test_crlf_and_bom_manifests_read_like_plain_ones(tmp_path, caplog, encoding):
    text = "# curated\na.jpg a_segmentation.png\n\"b c.jpg\" \"b c_segmentation.png\"\n"
    plain = tmp_path / "plain.txt"
    plain.write_text(text)
    data = text.encode()
    if "crlf" in encoding:
        data = data.replace(b"\n", b"\r\n")
    if "bom" in encoding:
        data = b"\xef\xbb\xbf" + data
    other = tmp_path / "other.txt"
    other.write_bytes(data)
    with caplog.at_level(logging.INFO, logger="segdet.data.pairs"):
        got = read_manifest(other)
    assert [(p.image, p.label) for p in got] == [(p.image, p.label) for p in read_manifest(plain)]
    assert [p.where for p in got] == [f"{other}:2", f"{other}:3"]  # line numbers as an editor shows them
    crlf_notes = [r.getMessage() for r in caplog.records if "CRLF" in r.getMessage()]
    assert crlf_notes == ([f"{other}: Windows line ends (CRLF) read as plain line ends"] if "crlf" in encoding else [])


def test_images_over_the_pixel_limit_are_refused_from_the_header(tmp_path):
    bomb = png_bomb(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 2_000_000 and 30000 * 30000 > MAX_PIXELS
    for read in (read_rgb, read_gray):
        with pytest.raises(FormatError, match=r"bomb\.png: the image is 30000x30000 \(900 megapixels\), more than "
                                              r"segdet's limit of 179"):
            read(bomb)
    ok = png_bomb(tmp_path / "ok.png", side=2000)  # a large image under the limit still reads
    assert read_gray(ok).shape == (2000, 2000)


def test_plain_rgb_images_and_0_255_masks_log_no_conversion(tmp_path, caplog):
    colour = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    with caplog.at_level(logging.INFO, logger="segdet.data.pairs"):
        assert validate_seg([_pair(tmp_path, "x", colour, _mask(255))], tmp_path) == []
    assert _notes(caplog) == []
