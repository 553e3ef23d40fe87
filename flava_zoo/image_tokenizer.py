"""Codebook targets for masked image modelling (MIM), behind a small pluggable interface.

FLAVA predicts, for each masked patch, the index that OpenAI's DALL-E dVAE encoder assigns
to the matching cell of a 112 px copy of the image (8192 codes on a 14x14 grid). Those
weights cannot be fetched here, so the codebook target is optional: an
:class:`ImageTokenizer` is built only from a file the user supplies
(:meth:`DalleImageTokenizer.from_file`), and nothing is ever downloaded.

:class:`DalleEncoder` reproduces the dVAE encoder of github.com/openai/DALL-E
(``dall_e/encoder.py``) with ``nn.Conv2d`` layers under the same module names, so a state
dict of the original loads after :func:`convert_dalle_state_dict` renames ``w``/``b`` to
``weight``/``bias``. The transformers ``FlavaImageCodebook`` layout is converted too.

The original ``encoder.pkl`` is a pickled module, and unpickling it runs code; this package
loads only tensors (``.safetensors``, or a ``torch.save``-d state dict read with
``weights_only=True``). To convert it once, in an environment you trust and with the
``dall_e`` package installed::

    enc = torch.load("encoder.pkl", weights_only=False)
    safetensors.torch.save_file(enc.state_dict(), "dalle_encoder.safetensors")
"""

from __future__ import annotations

import abc
import math
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .weights import load_state_dict_file

LOGIT_LAPLACE_EPS = 0.1
"""DALL-E's pixel squashing: inputs in [0, 1] go to [eps, 1 - eps] (``dall_e/utils.py``)."""


class ImageTokenizer(abc.ABC):
    """Maps images to discrete codebook indices, one per patch of the image encoder's grid."""

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of distinct codes, the size of the MIM head's output."""

    @abc.abstractmethod
    def tokenize(self, pixel_values: Tensor, grid_size: int | tuple[int, int]) -> Tensor:
        """Codebook indices of ``(B, C, H, W)`` images as a ``LongTensor (B, h*w)``.

        ``grid_size`` is the image encoder's patch grid ``(h, w)`` (an int for a square
        one). Indices are flattened row-major, the order of the encoder's patch tokens and
        of :func:`flava_zoo.losses.patchify`, so ``indices[mask]`` gives MIM labels for a
        ``(B, h*w)`` boolean patch mask.
        """


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    """``(h, w)`` from an int or a pair, rejecting anything else."""
    if isinstance(size, int):
        pair = (size, size)
    else:
        pair = tuple(int(s) for s in size)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"grid size must be a positive int or (h, w) pair, got {size!r}")
    return pair  # type: ignore[return-value]


class _Conv(nn.Conv2d):
    """Same-padded odd-kernel convolution initialised like DALL-E's ``Conv2d``."""

    def __init__(self, n_in: int, n_out: int, kernel_size: int) -> None:
        super().__init__(n_in, n_out, kernel_size, padding=(kernel_size - 1) // 2)
        nn.init.normal_(self.weight, std=1 / math.sqrt(n_in * kernel_size**2))
        nn.init.zeros_(self.bias)


class DalleEncoderBlock(nn.Module):
    """Residual block: ``id_path(x) + post_gain * res_path(x)``, four convolutions wide."""

    def __init__(self, n_in: int, n_out: int, n_layers: int) -> None:
        super().__init__()
        if n_out % 4:
            raise ValueError(f"block width {n_out} must be divisible by 4")
        n_hid = n_out // 4
        self.post_gain = 1 / n_layers**2
        self.id_path = _Conv(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        self.res_path = nn.Sequential(
            OrderedDict(
                [
                    ("relu_1", nn.ReLU()),
                    ("conv_1", _Conv(n_in, n_hid, 3)),
                    ("relu_2", nn.ReLU()),
                    ("conv_2", _Conv(n_hid, n_hid, 3)),
                    ("relu_3", nn.ReLU()),
                    ("conv_3", _Conv(n_hid, n_hid, 3)),
                    ("relu_4", nn.ReLU()),
                    ("conv_4", _Conv(n_hid, n_out, 1)),
                ]
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``(B, n_in, H, W)`` features."""
        return self.id_path(x) + self.post_gain * self.res_path(x)


class DalleEncoder(nn.Module):
    """The DALL-E dVAE encoder: images to per-cell codebook logits ``(B, vocab, H/8, W/8)``.

    Defaults are the released model (``group_count=4, n_hid=256, n_blk_per_group=2,
    vocab_size=8192``). Group ``k`` (from 0) is ``n_hid * 2**k`` channels wide and all
    groups but the last end in a 2x2 max-pool, so the grid shrinks by
    ``2 ** (group_count - 1)``. Smaller sizes build tiny encoders for tests.
    """

    def __init__(
        self,
        group_count: int = 4,
        n_hid: int = 256,
        n_blk_per_group: int = 2,
        input_channels: int = 3,
        vocab_size: int = 8192,
    ) -> None:
        super().__init__()
        if min(group_count, n_hid, n_blk_per_group, input_channels, vocab_size) < 1:
            raise ValueError(
                "DalleEncoder sizes must be positive, got "
                f"group_count={group_count}, n_hid={n_hid}, n_blk_per_group={n_blk_per_group}, "
                f"input_channels={input_channels}, vocab_size={vocab_size}"
            )
        self.group_count = group_count
        self.n_hid = n_hid
        self.n_blk_per_group = n_blk_per_group
        self.input_channels = input_channels
        self.vocab_size = vocab_size
        n_layers = group_count * n_blk_per_group
        layers: list[tuple[str, nn.Module]] = [("input", _Conv(input_channels, n_hid, 7))]
        width = n_hid
        for g in range(group_count):
            out = n_hid * 2**g
            group: list[tuple[str, nn.Module]] = []
            for i in range(n_blk_per_group):
                group.append((f"block_{i + 1}", DalleEncoderBlock(width, out, n_layers)))
                width = out
            if g < group_count - 1:
                group.append(("pool", nn.MaxPool2d(kernel_size=2)))
            layers.append((f"group_{g + 1}", nn.Sequential(OrderedDict(group))))
        layers.append(
            (
                "output",
                nn.Sequential(
                    OrderedDict([("relu", nn.ReLU()), ("conv", _Conv(width, vocab_size, 1))])
                ),
            )
        )
        self.blocks = nn.Sequential(OrderedDict(layers))

    @property
    def downsample(self) -> int:
        """How many input pixels one output cell spans along each side (8 for DALL-E)."""
        return 2 ** (self.group_count - 1)

    def forward(self, x: Tensor) -> Tensor:
        """Codebook logits ``(B, vocab, H / downsample, W / downsample)`` of mapped pixels."""
        if x.dim() != 4 or x.shape[1] != self.input_channels:
            raise ValueError(
                f"expected images (B, {self.input_channels}, H, W), got shape {tuple(x.shape)}"
            )
        return self.blocks(x)


_HF_GROUP = re.compile(r"^(blocks\.group_\d+)\.group\.")


def convert_dalle_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a DALL-E encoder state dict into :class:`DalleEncoder`'s parameter names.

    Accepts three layouts and returns a new dict:

    - OpenAI ``dall_e.Encoder``: custom convolutions hold ``w`` and ``b``, e.g.
      ``blocks.group_2.block_1.res_path.conv_1.w`` becomes ``...conv_1.weight``;
    - transformers ``FlavaImageCodebook``: ``blocks.group_1.group.block_1.res_path.path.conv_1.weight``
      becomes ``blocks.group_1.block_1.res_path.conv_1.weight``; inside a
      ``FlavaForPreTraining`` state dict only the ``image_codebook.`` entries are kept;
    - this module's own names, returned unchanged.
    """
    prefix = "image_codebook."
    if any(key.startswith(prefix) for key in state_dict):
        state_dict = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    converted: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        new = _HF_GROUP.sub(r"\1.", key).replace(".res_path.path.", ".res_path.")
        if new.endswith(".w"):
            new = new[:-2] + ".weight"
        elif new.endswith(".b"):
            new = new[:-2] + ".bias"
        if new in converted:
            raise ValueError(f"state dict has two entries that both map to {new!r}")
        converted[new] = value
    return converted


def infer_dalle_arch(state_dict: Mapping[str, Tensor]) -> dict[str, int]:
    """Read :class:`DalleEncoder`'s constructor arguments off a converted state dict."""
    try:
        n_hid, input_channels = state_dict["blocks.input.weight"].shape[:2]
        vocab_size = state_dict["blocks.output.conv.weight"].shape[0]
    except KeyError as err:
        raise ValueError(f"not a DALL-E encoder state dict: missing {err.args[0]!r}") from None
    groups = {int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.group_(\d+)\.", k))}
    blocks = {
        int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.group_1\.block_(\d+)\.", k))
    }
    return {
        "group_count": max(groups, default=0),
        "n_hid": int(n_hid),
        "n_blk_per_group": max(blocks, default=0),
        "input_channels": int(input_channels),
        "vocab_size": int(vocab_size),
    }


def load_tensor_file(path: str | Path) -> dict[str, Tensor]:
    """Load a flat state dict of tensors without running code (see :mod:`flava_zoo.weights`)."""
    state = load_state_dict_file(path)
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return state


class DalleImageTokenizer(nn.Module, ImageTokenizer):
    """Codebook MIM targets from a frozen :class:`DalleEncoder`, as FLAVA used them.

    ``tokenize`` takes the model's *normalised* pixels, undoes the normalisation with
    ``mean``/``std`` (the values the image transform used; the default leaves pixels as they
    are, i.e. already in [0, 1]), resizes to ``grid * downsample`` pixels (112 px for a
    14x14 grid, FLAVA's setting), applies DALL-E's logit-Laplace map
    ``x * (1 - 2 * 0.1) + 0.1`` and returns the argmax code of every cell. The encoder is
    frozen and always in eval mode. Constructing from an encoder directly is the explicit
    way to get random weights; :meth:`from_file` loads real ones.
    """

    def __init__(
        self,
        encoder: DalleEncoder,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        channels = encoder.input_channels
        mean = [0.0] * channels if mean is None else list(mean)
        std = [1.0] * channels if std is None else list(std)
        if len(mean) != channels or len(std) != channels:
            raise ValueError(
                f"mean and std need {channels} values (one per channel), got {mean} and {std}"
            )
        self.encoder = encoder.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    @property
    def vocab_size(self) -> int:
        """Number of codes of the wrapped encoder."""
        return self.encoder.vocab_size

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        **arch: int,
    ) -> DalleImageTokenizer:
        """Build a tokenizer from an encoder state dict in ``.safetensors`` or torch format.

        Any of the layouts :func:`convert_dalle_state_dict` knows is accepted. The
        architecture is read off the tensors; ``arch`` (``DalleEncoder`` arguments) may state
        it explicitly, and a mismatch is an error naming the file.
        """
        state_dict = convert_dalle_state_dict(load_tensor_file(path))
        try:
            config = infer_dalle_arch(state_dict) | arch
            encoder = DalleEncoder(**config)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        try:
            encoder.load_state_dict(state_dict)
        except RuntimeError as err:
            raise ValueError(f"{path} does not fit DalleEncoder({config}): {err}") from None
        return cls(encoder, mean=mean, std=std)

    def train(self, mode: bool = True) -> DalleImageTokenizer:
        """Keep the encoder in eval mode whatever the parent module's mode is."""
        super().train(mode)
        self.encoder.eval()
        return self

    def preprocess(self, pixel_values: Tensor, grid_size: int | tuple[int, int]) -> Tensor:
        """The encoder's input: de-normalised, resized, clamped to [0, 1], logit-Laplace mapped."""
        if pixel_values.dim() != 4:
            raise ValueError(f"expected images (B, C, H, W), got shape {tuple(pixel_values.shape)}")
        rows, cols = _pair(grid_size)
        size = (rows * self.encoder.downsample, cols * self.encoder.downsample)
        x = pixel_values.to(self.mean.device, torch.float32) * self.std + self.mean
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        x = x.clamp(0.0, 1.0) * (1 - 2 * LOGIT_LAPLACE_EPS) + LOGIT_LAPLACE_EPS
        return x.to(self.encoder.blocks.input.weight.dtype)

    @torch.no_grad()
    def tokenize(self, pixel_values: Tensor, grid_size: int | tuple[int, int]) -> Tensor:
        """Codebook indices ``LongTensor (B, h*w)``, row-major, on ``pixel_values``' device."""
        self.encoder.eval()
        x = self.preprocess(pixel_values, grid_size)
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = self.encoder(x)
        return logits.argmax(dim=1).flatten(1).to(pixel_values.device)
