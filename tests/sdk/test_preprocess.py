"""Geometric preprocessing against the official loaders' chains (torch-free re-implementations
in numpy + Pillow), colour handling, crop validation."""
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import engine_fixtures as fx  # noqa: E402

from reid_sdk.errors import InputError, SpecError  # noqa: E402
from reid_sdk.preprocess import (Preprocessor, check_crop, pad_to_square_borders,  # noqa: E402
                                 prepare_crop, preprocess_frames)

HAMOBE_INPUT = fx.hamobe_like_spec(height=224, width=224)["input"]
KEYREID_INPUT = fx.keyreid_like_spec(height=256, width=128)["input"]
# odd / even, tall / wide / square, extreme aspect, one-pixel sides
SIZES = [(128, 64), (127, 64), (128, 63), (64, 128), (63, 128), (64, 127), (100, 100),
         (1, 1), (1, 40), (40, 1), (301, 97), (97, 301), (224, 224), (256, 128)]


def test_pad_borders_follow_the_official_rule():
    for h in range(1, 40):
        for w in range(1, 40):
            top, bottom, left, right = pad_to_square_borders(h, w)
            if h >= w:  # tall: ceil((H - W) / 2) each side, width H or H + 1
                assert (top, bottom) == (0, 0) and left == right == -(-(h - w) // 2)
                assert w + left + right in (h, h + 1)
            else:  # wide: floor((W - H) / 2) each side
                assert (left, right) == (0, 0) and top == bottom == (w - h) // 2
                assert h + top + bottom in (w, w - 1)


@pytest.mark.parametrize("size", SIZES)
def test_hamobe_pad_and_bicubic_equal_official_chain(rng, size):
    crop = fx.random_crop(rng, *size)
    ours = Preprocessor(HAMOBE_INPUT)(crop)
    official = fx.official_hamobe_image(crop, (224, 224))
    assert ours.shape == (224, 224, 3) and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, official)


@pytest.mark.parametrize("size", SIZES)
def test_keyreid_bilinear_stretch_equals_official(rng, size):
    crop = fx.random_crop(rng, *size)
    ours = Preprocessor(KEYREID_INPUT)(crop)
    np.testing.assert_array_equal(ours, fx.official_keyreid_image(crop, (256, 128)))
    assert ours.shape == (256, 128, 3)


def test_padding_is_black_and_content_survives(rng):
    """A tall crop keeps its columns in the middle; the padded columns are exactly 0 (before
    resize, checked at the input size so no filter mixes them)."""
    crop = fx.random_crop(rng, 40, 31)
    spec_input = fx.hamobe_like_spec(height=40, width=41)["input"]
    out = Preprocessor(spec_input)(np.maximum(crop, 1))
    assert out.shape == (40, 41, 3)
    assert not out[:, :5].any() and not out[:, -5:].any()
    np.testing.assert_array_equal(out[:, 5:36], np.maximum(crop, 1))


def test_policy_interpolation_and_pad_value_come_from_the_spec(rng):
    """Nothing is keyed on the architecture: a pad_to_square + bilinear + grey-pad spec and a
    stretch + bicubic spec give what numpy padding + the named Pillow filter give."""
    crop = fx.random_crop(rng, 45, 20)
    spec_input = fx.hamobe_like_spec(height=30, width=18)["input"]
    spec_input["resize"] = {"policy": "pad_to_square", "interpolation": "bilinear",
                            "pad_value": 114}
    padded = np.pad(crop, ((0, 0), (13, 13), (0, 0)), constant_values=114)
    expect = np.asarray(Image.fromarray(padded).resize((18, 30), Image.BILINEAR))
    np.testing.assert_array_equal(Preprocessor(spec_input)(crop), expect)

    spec_input["resize"] = {"policy": "stretch", "interpolation": "bicubic", "pad_value": 0}
    expect = np.asarray(Image.fromarray(crop).resize((18, 30), Image.BICUBIC))
    np.testing.assert_array_equal(Preprocessor(spec_input)(crop), expect)

    spec_input["resize"] = {"policy": "crop_center", "interpolation": "bicubic", "pad_value": 0}
    with pytest.raises(SpecError, match="resize policy"):
        Preprocessor(spec_input)


def test_bgr_input_is_converted(rng):
    crop = fx.random_crop(rng, 50, 23)
    pre = Preprocessor(HAMOBE_INPUT)
    np.testing.assert_array_equal(pre.prepare(crop[:, :, ::-1].copy(), "BGR"),
                                  pre.prepare(crop, "RGB"))
    # and the conversion is not a no-op
    assert not np.array_equal(pre.prepare(crop, "BGR"), pre.prepare(crop, "RGB"))


@pytest.mark.parametrize("shape", [(37, 21), (37, 21, 1)])
def test_grayscale_converted_like_pil_convert_rgb(rng, shape):
    gray = rng.integers(0, 256, size=shape, dtype=np.uint8)
    expected_rgb = np.asarray(Image.fromarray(gray.reshape(shape[:2])).convert("RGB"))
    np.testing.assert_array_equal(prepare_crop(check_crop(gray, "g"), "RGB"), expected_rgb)
    pre = Preprocessor(KEYREID_INPUT)
    np.testing.assert_array_equal(pre.prepare(gray, "RGB"), pre(expected_rgb))
    np.testing.assert_array_equal(pre.prepare(gray, "BGR"), pre(expected_rgb))


def test_rgba_and_bgra_drop_alpha_like_pil_convert_rgb(rng):
    rgba = rng.integers(0, 256, size=(33, 18, 4), dtype=np.uint8)
    expected_rgb = np.asarray(Image.fromarray(rgba).convert("RGB"))
    np.testing.assert_array_equal(prepare_crop(rgba, "RGB"), expected_rgb)
    bgra = np.concatenate([rgba[:, :, 2::-1], rgba[:, :, 3:]], axis=2)
    np.testing.assert_array_equal(prepare_crop(bgra, "BGR"), expected_rgb)


@pytest.mark.parametrize("bad,match", [
    (np.zeros((10, 10, 3), np.float32), "uint8.*float32.*255"),
    (np.zeros((10, 10, 3), np.uint16), "uint8.*uint16"),
    (np.zeros((10, 10, 2), np.uint8), "HxWx3"),
    (np.zeros((10, 10, 3, 1), np.uint8), "HxWx3"),
    (np.zeros((10,), np.uint8), "HxWx3"),
    (np.zeros((0, 10, 3), np.uint8), "zero-size"),
    (np.zeros((10, 0), np.uint8), "zero-size"),
    ([[1, 2], [3, 4]], "uint8.*int64"),
])
def test_bad_crops_are_refused_with_the_reason(bad, match):
    with pytest.raises(InputError, match=match):
        check_crop(bad, "tracklet 2, frame 5")
    with pytest.raises(InputError, match="tracklet 2, frame 5"):
        check_crop(bad, "tracklet 2, frame 5")


def test_pil_images_are_accepted(rng):
    crop = fx.random_crop(rng, 40, 20)
    np.testing.assert_array_equal(check_crop(Image.fromarray(crop), "x"), crop)


def test_threaded_batch_equals_serial_loop(rng):
    crops = [fx.random_crop(rng, *rng.integers(5, 90, size=2)) for _ in range(40)]
    serial = np.stack([fx.official_hamobe_image(c, (224, 224)) for c in crops])
    with ThreadPoolExecutor(4) as pool:
        threaded = preprocess_frames(crops, HAMOBE_INPUT, executor=pool)
    np.testing.assert_array_equal(threaded, serial)
    np.testing.assert_array_equal(preprocess_frames(crops, HAMOBE_INPUT), serial)
    with pytest.raises(InputError, match="color"):
        preprocess_frames(crops, HAMOBE_INPUT, color="rgb")
