"""Image preprocessing for FLAVA: any PIL image or uint8 tensor to a normalised RGB tensor.

FLAVA normalises with the CLIP statistics. :func:`image_transform` builds the training
(random resized crop) and evaluation (resize + centre crop) pipelines on
``torchvision.transforms.v2``; both start with :class:`ToRGB`, so grayscale, palette, CMYK,
16-bit, float and transparent images all come out as 3-channel tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

FLAVA_MEAN = (0.48145466, 0.4578275, 0.40821073)
"""Per-channel RGB mean FLAVA normalises with (the CLIP statistics)."""
FLAVA_STD = (0.26862954, 0.26130258, 0.27577711)
"""Per-channel RGB standard deviation FLAVA normalises with (the CLIP statistics)."""

_PREMULTIPLIED_MODES = ("RGBa", "La")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA")


def _has_transparency(image: PIL.Image.Image) -> bool:
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return True
    return image.mode == "P" and image.palette is not None and image.palette.mode == "RGBA"


def _gray_to_rgb(gray: np.ndarray) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.ascontiguousarray(gray, dtype=np.uint8)).convert("RGB")


def _rescale_to_uint8(values: np.ndarray, full_scale: float) -> np.ndarray:
    return np.clip(np.rint(values * (255.0 / full_scale)), 0, 255).astype(np.uint8)


def _min_max_to_uint8(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high == low:
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return _rescale_to_uint8(values - low, high - low)


def _deep_to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    values = np.asarray(image).astype(np.float64)
    if image.mode in _SIXTEEN_BIT_MODES:
        return _gray_to_rgb(_rescale_to_uint8(values, 65535.0))
    if image.mode == "I":
        if values.size == 0 or (values.min() >= 0 and values.max() <= 65535):
            return _gray_to_rgb(_rescale_to_uint8(values, 65535.0))
        return _gray_to_rgb(_min_max_to_uint8(values))
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    if values.size == 0 or (values.min() >= 0 and values.max() <= 1):
        return _gray_to_rgb(_rescale_to_uint8(values, 1.0))
    if values.min() >= 0 and values.max() <= 255:
        return _gray_to_rgb(_rescale_to_uint8(values, 255.0))
    return _gray_to_rgb(_min_max_to_uint8(values))


def _composite_on_white(colour: np.ndarray, alpha: np.ndarray, premultiplied: bool) -> np.ndarray:
    colour = colour.astype(np.int32)
    alpha = alpha.astype(np.int32)[..., None]
    if premultiplied:
        out = colour + (255 - alpha)
    else:
        out = (colour * alpha + 255 * (255 - alpha) + 127) // 255
    return np.clip(out, 0, 255).astype(np.uint8)


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Convert a PIL image of any mode to 8-bit RGB, so every input reaches the model alike.

    - Transparency (RGBA, LA, PA, premultiplied RGBa/La, palette or colour-key transparency)
      is composited on a **white** background, not dropped (which would expose whatever
      colour hides under transparent pixels, often black).
    - 16-bit modes (``I;16``, ``I;16B``, ...) are scaled by 255/65535, so 65535 is white.
      Mode ``I`` (32-bit) is read the same way when its values lie in 0..65535 (how 16-bit
      PNG/TIFF files often load); otherwise its range is stretched to 0..255.
    - Mode ``F`` is read as 0..1 when its values lie there, as 0..255 when they lie there,
      and otherwise its range is stretched to 0..255 (NaN and infinities become 0).
    - L, 1, P, CMYK, YCbCr, LAB, HSV and others use Pillow's conversion (CMYK without ICC
      colour management).

    An RGB image without transparency is returned unchanged.
    """
    if not isinstance(image, PIL.Image.Image):
        raise TypeError(f"to_rgb expects a PIL image, got {type(image).__name__}")
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return _deep_to_rgb(image)
    if mode in _PREMULTIPLIED_MODES:
        pixels = np.asarray(image)
        colour = pixels[..., :-1]
        if mode == "La":
            colour = np.repeat(colour, 3, axis=-1)
        return PIL.Image.fromarray(_composite_on_white(colour, pixels[..., -1], True))
    if _has_transparency(image):
        pixels = np.asarray(image.convert("RGBA"))
        rgb = _composite_on_white(pixels[..., :3], pixels[..., 3], premultiplied=False)
        return PIL.Image.fromarray(rgb)
    if mode == "RGB":
        return image
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise ValueError(f"cannot convert a PIL image of mode {mode} to RGB: {error}") from error


def _tensor_to_rgb(image: torch.Tensor) -> torch.Tensor:
    if image.ndim == 2:
        image = image.unsqueeze(0)
    if image.ndim < 3 or image.shape[-3] not in (1, 2, 3, 4):
        raise ValueError(
            "image tensor must have shape (..., C, H, W) with C in 1, 2, 3, 4 "
            f"(gray, gray+alpha, RGB, RGBA), got {tuple(image.shape)}"
        )
    if image.dtype == torch.uint8:
        full = 255
    elif image.dtype.is_floating_point:
        full = 1
    else:
        raise TypeError(f"image tensor must be uint8 or floating point, got {image.dtype}")
    channels = image.shape[-3]
    colour = image[..., : 3 if channels >= 3 else 1, :, :]
    if channels in (2, 4):
        alpha = image[..., -1:, :, :]
        if image.dtype == torch.uint8:
            mixed = colour.int() * alpha.int() + 255 * (255 - alpha.int())
            colour = torch.div(mixed + 127, 255, rounding_mode="floor").to(torch.uint8)
        else:
            colour = colour * alpha + full * (1 - alpha)
    if colour.shape[-3] == 1:
        colour = colour.expand(*colour.shape[:-3], 3, *colour.shape[-2:])
    return colour.contiguous()


def _is_plain_tensor(value: Any) -> bool:
    return type(value) is torch.Tensor


class ToRGB(v2.Transform):
    """v2 transform making any image 3-channel RGB: PIL via :func:`to_rgb`, tensors too.

    Tensors are ``(..., C, H, W)``, uint8 (0..255) or float (0..1), with 1 (gray),
    2 (gray + alpha), 3 (RGB) or 4 (RGBA) channels; alpha is composited on white, gray is
    repeated to three channels.
    """

    _transformed_types = (PIL.Image.Image, tv_tensors.Image, _is_plain_tensor)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        """Convert one image; called by ``forward`` for each image in the sample."""
        if isinstance(inpt, PIL.Image.Image):
            return to_rgb(inpt)
        rgb = _tensor_to_rgb(inpt.as_subclass(torch.Tensor))
        return tv_tensors.wrap(rgb, like=inpt) if isinstance(inpt, tv_tensors.Image) else rgb


def _check_stats(name: str, values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) != 3:
        raise ValueError(f"{name} must have 3 values (R, G, B), got {len(values)}")
    return (float(values[0]), float(values[1]), float(values[2]))


def image_transform(
    image_size: int = 224,
    train: bool = False,
    mean: Sequence[float] = FLAVA_MEAN,
    std: Sequence[float] = FLAVA_STD,
    scale: tuple[float, float] = (0.9, 1.0),
    hflip: bool = False,
) -> v2.Compose:
    """Build the FLAVA image pipeline: PIL image or image tensor -> normalised float ``(3, S, S)``.

    ``train=True``: random resized crop (area fraction ``scale``, bicubic, antialiased) and,
    with ``hflip``, a random horizontal flip; randomness comes from torch's global RNG as
    for all torchvision transforms. ``train=False``: resize the short side to ``image_size``
    (bicubic) and centre crop, deterministic. Both end with a plain ``torch.Tensor``.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    mean = _check_stats("mean", mean)
    std = _check_stats("std", std)
    if min(std) <= 0:
        raise ValueError(f"std values must be positive, got {std}")
    low, high = scale
    if not 0 < low <= high <= 1:
        raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {tuple(scale)}")
    bicubic = v2.InterpolationMode.BICUBIC
    if train:
        geometry: list[v2.Transform] = [
            v2.RandomResizedCrop(
                image_size, scale=(low, high), interpolation=bicubic, antialias=True
            )
        ]
        if hflip:
            geometry.append(v2.RandomHorizontalFlip())
    else:
        geometry = [
            v2.Resize(image_size, interpolation=bicubic, antialias=True),
            v2.CenterCrop(image_size),
        ]
    return v2.Compose(
        [
            ToRGB(),
            *geometry,
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
            v2.ToPureTensor(),
        ]
    )


def denormalize(
    tensor: torch.Tensor, mean: Sequence[float] = FLAVA_MEAN, std: Sequence[float] = FLAVA_STD
) -> torch.Tensor:
    """Undo normalisation for display: ``(..., 3, H, W)`` -> RGB values clamped to [0, 1]."""
    mean = _check_stats("mean", mean)
    std = _check_stats("std", std)
    if tensor.ndim < 3 or tensor.shape[-3] != 3:
        raise ValueError(f"expected a (..., 3, H, W) tensor, got shape {tuple(tensor.shape)}")
    shape = (3, 1, 1)
    mean_t = torch.tensor(mean, dtype=tensor.dtype, device=tensor.device).view(shape)
    std_t = torch.tensor(std, dtype=tensor.dtype, device=tensor.device).view(shape)
    return (tensor * std_t + mean_t).clamp(0, 1)
