"""Image transforms: every PIL mode and tensor layout becomes a normalised (3, S, S) tensor."""

from __future__ import annotations

import pickle

import numpy as np
import PIL.Image
import pytest
import torch
from torchvision import tv_tensors

from flava_zoo.transforms import (
    FLAVA_MEAN,
    FLAVA_STD,
    ToRGB,
    denormalize,
    image_transform,
    to_rgb,
)

SIZE = 32
WHITE = ((1 - torch.tensor(FLAVA_MEAN)) / torch.tensor(FLAVA_STD)).view(3, 1, 1)
BLACK = (-torch.tensor(FLAVA_MEAN) / torch.tensor(FLAVA_STD)).view(3, 1, 1)


def _palette_image(index: int, transparent: bool = False, mode: str = "P") -> PIL.Image.Image:
    """A palette image whose pixels all use ``index``: 0 is black, 1 is white."""
    image = PIL.Image.new(mode, (40, 30), index if mode == "P" else (index, 255))
    image.putpalette([0, 0, 0, 255, 255, 255] + [0] * (254 * 3))
    if transparent:
        image.info["transparency"] = 0
    return image


# (mode, white pixel, black pixel) for PIL.Image.new
MODES = [
    ("1", 1, 0),
    ("L", 255, 0),
    ("LA", (255, 255), (0, 255)),
    ("La", (255, 255), (0, 255)),
    ("P", 1, 0),
    ("PA", 1, 0),
    ("RGB", (255, 255, 255), (0, 0, 0)),
    ("RGBA", (255, 255, 255, 255), (0, 0, 0, 255)),
    ("RGBa", (255, 255, 255, 255), (0, 0, 0, 255)),
    ("RGBX", (255, 255, 255, 0), (0, 0, 0, 0)),
    ("CMYK", (0, 0, 0, 0), (0, 0, 0, 255)),
    ("YCbCr", (255, 128, 128), (0, 128, 128)),
    ("I;16", 65535, 0),
    ("I;16B", 65535, 0),
    ("I;16L", 65535, 0),
    ("I", 65535, 0),
    ("F", 1.0, 0.0),
]


def _make(mode: str, value) -> PIL.Image.Image:
    if mode in ("P", "PA"):
        return _palette_image(value, mode=mode)
    return PIL.Image.new(mode, (40, 30), value)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize(("mode", "white", "black"), MODES, ids=[m[0] for m in MODES])
def test_every_mode_gives_normalised_rgb(mode, white, black, train):
    transform = image_transform(SIZE, train=train)
    torch.manual_seed(0)
    for value, expected in ((white, WHITE), (black, BLACK)):
        image = _make(mode, value)
        assert image.mode == mode
        out = transform(image)
        assert type(out) is torch.Tensor
        assert out.shape == (3, SIZE, SIZE) and out.dtype == torch.float32
        torch.testing.assert_close(out, expected.expand_as(out), atol=2e-2, rtol=0)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "La", "RGBa", "PA"])
def test_fully_transparent_pixels_become_white(mode):
    image = PIL.Image.new(mode, (8, 8), (0,) * len(mode))
    assert np.asarray(to_rgb(image)).min() == 255


def test_palette_transparency_is_composited_on_white():
    image = _palette_image(0, transparent=True)  # every pixel is black and transparent
    assert np.asarray(to_rgb(image)).min() == 255
    assert np.asarray(to_rgb(_palette_image(0))).max() == 0


def test_colour_key_transparency_on_l_and_rgb():
    gray = PIL.Image.new("L", (4, 4), 7)
    gray.info["transparency"] = 7
    assert np.asarray(to_rgb(gray)).min() == 255
    rgb = PIL.Image.new("RGB", (4, 4), (1, 2, 3))
    rgb.info["transparency"] = (1, 2, 3)
    assert np.asarray(to_rgb(rgb)).min() == 255


def test_partial_alpha_blends_with_white():
    red = PIL.Image.new("RGBA", (2, 2), (255, 0, 0, 128))
    assert np.asarray(to_rgb(red))[0, 0].tolist() == [255, 127, 127]
    premultiplied = PIL.Image.new("RGBa", (2, 2), (128, 0, 0, 128))
    assert np.asarray(to_rgb(premultiplied))[0, 0].tolist() == [255, 127, 127]


def test_deep_images_scale_instead_of_clipping():
    ramp16 = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    little_endian = PIL.Image.fromarray(ramp16)
    big_endian = PIL.Image.frombytes("I;16B", (4, 1), ramp16.astype(">u2").tobytes())
    for image, mode in ((little_endian, "I;16"), (big_endian, "I;16B")):
        assert image.mode == mode
        assert np.asarray(to_rgb(image))[0, :, 0].tolist() == [0, 1, 128, 255]
    as_int32 = PIL.Image.fromarray(ramp16.astype(np.int32))
    assert as_int32.mode == "I"
    assert np.asarray(to_rgb(as_int32))[0, :, 0].tolist() == [0, 1, 128, 255]
    signed = PIL.Image.fromarray(np.array([[-1000, 0, 1000]], dtype=np.int32))
    assert np.asarray(to_rgb(signed))[0, :, 0].tolist() == [0, 128, 255]
    unit = PIL.Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert np.asarray(to_rgb(unit))[0, :, 0].tolist() == [0, 128, 255]
    bytes_range = PIL.Image.fromarray(np.array([[0.0, 100.0, 255.0]], dtype=np.float32))
    assert np.asarray(to_rgb(bytes_range))[0, :, 0].tolist() == [0, 100, 255]
    wide = PIL.Image.fromarray(np.array([[-5.0, np.nan, 5.0, 1e4]], dtype=np.float32))
    assert np.asarray(to_rgb(wide))[0, :, 0].tolist() == [0, 0, 0, 255]


def test_rgb_input_is_returned_unchanged():
    image = PIL.Image.new("RGB", (3, 3), (10, 20, 30))
    assert to_rgb(image) is image


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_tensor_inputs(train):
    transform = image_transform(SIZE, train=train)
    white_gray = torch.full((1, 30, 50), 255, dtype=torch.uint8)
    transparent = torch.zeros((4, 30, 50), dtype=torch.uint8)
    gray_alpha = torch.zeros((2, 30, 50), dtype=torch.uint8)
    float_rgb = torch.ones((3, 30, 50))
    plain_2d = torch.full((30, 50), 255, dtype=torch.uint8)
    wrapped = tv_tensors.Image(torch.full((3, 30, 50), 255, dtype=torch.uint8))
    for image in (white_gray, transparent, gray_alpha, float_rgb, plain_2d, wrapped):
        out = transform(image)
        assert type(out) is torch.Tensor and out.shape == (3, SIZE, SIZE)
        torch.testing.assert_close(out, WHITE.expand_as(out), atol=2e-2, rtol=0)
    black = transform(torch.zeros((3, 30, 50), dtype=torch.uint8))
    torch.testing.assert_close(black, BLACK.expand_as(black), atol=2e-2, rtol=0)


def test_tensor_alpha_matches_pil_alpha():
    generator = torch.Generator().manual_seed(0)
    rgba = torch.randint(0, 256, (4, 6, 5), dtype=torch.uint8, generator=generator)
    pil = PIL.Image.fromarray(rgba.permute(1, 2, 0).numpy())
    expected = torch.from_numpy(np.asarray(to_rgb(pil)).copy()).permute(2, 0, 1)
    assert torch.equal(ToRGB()(rgba), expected)
    batch = ToRGB()(torch.stack([rgba, rgba]))
    assert batch.shape == (2, 3, 6, 5) and torch.equal(batch[1], expected)


def test_tensor_errors():
    with pytest.raises(ValueError, match=r"C in 1, 2, 3, 4.*got \(5, 8, 8\)"):
        ToRGB()(torch.zeros((5, 8, 8), dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8 or floating point, got torch.int64"):
        ToRGB()(torch.zeros((3, 8, 8), dtype=torch.int64))
    with pytest.raises(TypeError, match="expects a PIL image, got ndarray"):
        to_rgb(np.zeros((4, 4, 3), dtype=np.uint8))


def _noise_image(width: int, height: int) -> PIL.Image.Image:
    rng = np.random.default_rng(0)
    return PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("size", [(64, 40), (40, 64), (33, 33)])
def test_non_square_inputs(size):
    image = _noise_image(*size)
    for train in (False, True):
        assert image_transform(24, train=train)(image).shape == (3, 24, 24)


def test_train_is_random_but_seeded_and_eval_is_deterministic():
    image = _noise_image(64, 48)
    train = image_transform(SIZE, train=True, scale=(0.3, 1.0), hflip=True)
    torch.manual_seed(0)
    first = train(image)
    torch.manual_seed(0)
    assert torch.equal(first, train(image))
    torch.manual_seed(1)
    assert not torch.equal(first, train(image))
    evaluate = image_transform(SIZE)
    torch.manual_seed(0)
    reference = evaluate(image)
    torch.manual_seed(123)
    assert torch.equal(reference, evaluate(image))


def test_hflip_flips_about_half_the_time():
    image = _noise_image(SIZE, SIZE)
    plain = image_transform(SIZE, train=True, scale=(1.0, 1.0))
    flipping = image_transform(SIZE, train=True, scale=(1.0, 1.0), hflip=True)
    torch.manual_seed(0)
    reference = plain(image)
    flips = 0
    for seed in range(20):
        torch.manual_seed(seed)
        out = flipping(image)
        if torch.equal(out, reference.flip(-1)):
            flips += 1
        else:
            assert torch.equal(out, reference)
    assert 3 <= flips <= 17


def test_eval_center_crop_and_denormalize_round_trip():
    image = _noise_image(SIZE + 16, SIZE)  # short side already SIZE: only the centre crop acts
    out = image_transform(SIZE)(image)
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[:, :, 8 : 8 + SIZE]
    restored = denormalize(out) * 255
    torch.testing.assert_close(restored, pixels.float(), atol=0.5, rtol=0)
    batch = denormalize(torch.stack([out, out]))
    assert batch.shape == (2, 3, SIZE, SIZE) and 0 <= batch.min() and batch.max() <= 1


def test_custom_statistics():
    image = PIL.Image.new("L", (8, 8), 255)
    out = image_transform(8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(image)
    torch.testing.assert_close(out, torch.ones(3, 8, 8))


def test_argument_errors():
    with pytest.raises(ValueError, match="image_size must be a positive integer, got 0"):
        image_transform(0)
    with pytest.raises(ValueError, match="scale must satisfy"):
        image_transform(scale=(0.5, 1.5))
    with pytest.raises(ValueError, match=r"mean must have 3 values \(R, G, B\), got 2"):
        image_transform(mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="std values must be positive"):
        image_transform(std=(0.5, 0.0, 0.5))
    with pytest.raises(ValueError, match=r"expected a \(..., 3, H, W\) tensor"):
        denormalize(torch.zeros(1, 8, 8))


def test_pipeline_pickles_for_dataloader_workers():
    transform = pickle.loads(pickle.dumps(image_transform(SIZE, train=True, hflip=True)))
    assert transform(PIL.Image.new("LA", (40, 30))).shape == (3, SIZE, SIZE)
