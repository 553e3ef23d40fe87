"""Tests for the pluggable codebook MIM target (DALL-E dVAE encoder)."""

from __future__ import annotations

import os
import pickle
import shlex
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from flava_zoo.image_tokenizer import (
    DalleEncoder,
    DalleImageTokenizer,
    ImageTokenizer,
    convert_dalle_state_dict,
    infer_dalle_arch,
)

TINY = {"group_count": 4, "n_hid": 16, "n_blk_per_group": 1, "vocab_size": 64}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread():
    """Tiny convolutions run faster on one thread than on a contended OpenMP team."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_encoder(seed: int = 0, **overrides: int) -> DalleEncoder:
    torch.manual_seed(seed)
    return DalleEncoder(**(TINY | overrides))


def _images(batch: int = 2, size: int = 224, seed: int = 1) -> torch.Tensor:
    pixels = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


def _original_layout(seed: int, group_count: int, n_hid: int, n_blk: int, vocab: int) -> dict:
    """A random state dict with the key names and shapes of OpenAI's ``dall_e.Encoder``."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def conv(name: str, n_in: int, n_out: int, kw: int) -> None:
        sd[f"{name}.w"] = torch.randn(n_out, n_in, kw, kw, generator=gen) / (n_in * kw * kw) ** 0.5
        sd[f"{name}.b"] = 0.1 * torch.randn(n_out, generator=gen)

    conv("blocks.input", 3, n_hid, 7)
    width = n_hid
    for g in range(1, group_count + 1):
        out = n_hid * 2 ** (g - 1)
        for i in range(1, n_blk + 1):
            prefix = f"blocks.group_{g}.block_{i}"
            if width != out:
                conv(f"{prefix}.id_path", width, out, 1)
            conv(f"{prefix}.res_path.conv_1", width, out // 4, 3)
            conv(f"{prefix}.res_path.conv_2", out // 4, out // 4, 3)
            conv(f"{prefix}.res_path.conv_3", out // 4, out // 4, 3)
            conv(f"{prefix}.res_path.conv_4", out // 4, out, 1)
            width = out
    conv("blocks.output.conv", width, vocab, 1)
    return sd


def _original_forward(sd: dict, x: torch.Tensor, group_count: int, n_blk: int) -> torch.Tensor:
    """DALL-E's encoder forward written out from ``dall_e/encoder.py``, on raw ``w``/``b``."""

    def conv(name: str, h: torch.Tensor) -> torch.Tensor:
        w = sd[f"{name}.w"]
        return F.conv2d(h, w, sd[f"{name}.b"], padding=(w.shape[-1] - 1) // 2)

    gain = 1 / (group_count * n_blk) ** 2
    x = conv("blocks.input", x)
    for g in range(1, group_count + 1):
        for i in range(1, n_blk + 1):
            prefix = f"blocks.group_{g}.block_{i}"
            identity = conv(f"{prefix}.id_path", x) if f"{prefix}.id_path.w" in sd else x
            h = x
            for j in range(1, 5):
                h = conv(f"{prefix}.res_path.conv_{j}", F.relu(h))
            x = identity + gain * h
        if g < group_count:
            x = F.max_pool2d(x, 2)
    return conv("blocks.output.conv", F.relu(x))


def _to_transformers_layout(sd: dict) -> dict:
    """Rename original keys as transformers' ``FlavaImageCodebook`` names them."""
    out = {}
    for key, value in sd.items():
        key = key[:-2] + (".weight" if key.endswith(".w") else ".bias")
        if key.startswith("blocks.group_"):
            group, rest = key[len("blocks.") :].split(".", 1)
            key = f"blocks.{group}.group.{rest}".replace(".res_path.", ".res_path.path.")
        out[key] = value
    return out


def test_tokenize_shape_and_range_for_224px_grid_14() -> None:
    tokenizer = DalleImageTokenizer(_tiny_encoder(), mean=CLIP_MEAN, std=CLIP_STD)
    assert isinstance(tokenizer, ImageTokenizer)
    assert tokenizer.vocab_size == 64
    indices = tokenizer.tokenize(_images(), grid_size=14)
    assert indices.shape == (2, 196) and indices.dtype == torch.long
    assert 0 <= indices.min() and indices.max() < 64
    assert indices.unique().numel() > 1


def test_tokenize_matches_encoder_on_112px_mapped_pixels() -> None:
    encoder = _tiny_encoder()
    tokenizer = DalleImageTokenizer(encoder, mean=CLIP_MEAN, std=CLIP_STD)
    images = _images(size=112)  # already the encoder's input size: no resizing
    pixels = images * torch.tensor(CLIP_STD).view(1, 3, 1, 1) + torch.tensor(CLIP_MEAN).view(
        1, 3, 1, 1
    )
    expected = encoder(pixels.clamp(0, 1) * 0.8 + 0.1).argmax(1).flatten(1)
    assert torch.equal(tokenizer.tokenize(images, 14), expected)


def test_tokenize_non_square_grid_and_determinism() -> None:
    tokenizer = DalleImageTokenizer(_tiny_encoder())
    images = torch.rand(3, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    first = tokenizer.tokenize(images, (4, 6))
    assert first.shape == (3, 24)
    assert torch.equal(first, tokenizer.tokenize(images, (4, 6)))
    assert torch.equal(first, DalleImageTokenizer(_tiny_encoder()).tokenize(images, (4, 6)))


def test_tokenizer_is_frozen_and_stays_in_eval() -> None:
    tokenizer = DalleImageTokenizer(_tiny_encoder())
    tokenizer.train()
    assert not tokenizer.encoder.training
    assert not any(p.requires_grad for p in tokenizer.parameters())
    images = torch.rand(1, 3, 32, 32, requires_grad=True)
    assert not tokenizer.tokenize(images, 4).requires_grad


def test_tokenize_errors() -> None:
    tokenizer = DalleImageTokenizer(_tiny_encoder())
    with pytest.raises(ValueError, match="grid size"):
        tokenizer.tokenize(torch.rand(1, 3, 32, 32), 0)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        tokenizer.tokenize(torch.rand(3, 32, 32), 4)
    with pytest.raises(ValueError, match="one per channel"):
        DalleImageTokenizer(_tiny_encoder(), mean=(0.5,), std=(0.5,))


def test_default_encoder_has_dalle_downsampling_and_vocab() -> None:
    encoder = DalleEncoder(n_hid=8, n_blk_per_group=1)
    assert encoder.downsample == 8 and encoder.vocab_size == 8192
    assert encoder.blocks.output.conv.in_channels == 64


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_save_and_from_file_round_trip(tmp_path: Path, suffix: str) -> None:
    encoder = _tiny_encoder(seed=3)
    path = tmp_path / f"dalle{suffix}"
    if suffix == ".safetensors":
        save_file(encoder.state_dict(), str(path))
    else:
        torch.save(encoder.state_dict(), path)
    loaded = DalleImageTokenizer.from_file(path, mean=CLIP_MEAN, std=CLIP_STD)
    assert infer_dalle_arch(loaded.encoder.state_dict()) == TINY | {"input_channels": 3}
    for key, value in encoder.state_dict().items():
        assert torch.equal(loaded.encoder.state_dict()[key], value)
    expected = DalleImageTokenizer(encoder, mean=CLIP_MEAN, std=CLIP_STD).tokenize(_images(), 14)
    assert torch.equal(loaded.tokenize(_images(), 14), expected)


def test_from_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        DalleImageTokenizer.from_file(tmp_path / "missing.pt")
    path = tmp_path / "tiny.pt"
    torch.save(_tiny_encoder().state_dict(), path)
    with pytest.raises(ValueError, match="tiny.pt does not fit DalleEncoder"):
        DalleImageTokenizer.from_file(path, vocab_size=128)
    other = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="other.pt: not a DALL-E encoder state dict"):
        DalleImageTokenizer.from_file(other)
    not_dict = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], not_dict)
    with pytest.raises(ValueError, match="list.pt does not hold a state dict"):
        DalleImageTokenizer.from_file(not_dict)


class _Payload:
    """Unpickling this runs a shell command: what an untrusted checkpoint can do."""

    def __init__(self, marker: Path) -> None:
        self.command = f"touch {shlex.quote(str(marker))}"

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_without_side_effect(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    payload = {"blocks.input.weight": torch.zeros(1), "evil": _Payload(marker)}
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    with pytest.raises(ValueError, match=r"refusing to load .*evil\.pt.*arbitrary code"):
        DalleImageTokenizer.from_file(path)
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Payload(marker)))  # the payload is live when unpickled freely
    assert marker.exists()


def test_pickled_module_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "encoder.pkl"
    torch.save(_tiny_encoder(), path)
    with pytest.raises(ValueError, match="encoder.pkl.*state_dict"):
        DalleImageTokenizer.from_file(path)


def test_convert_original_dalle_state_dict_reproduces_original_forward(tmp_path: Path) -> None:
    original = _original_layout(seed=4, group_count=4, n_hid=16, n_blk=2, vocab=32)
    converted = convert_dalle_state_dict(original)
    assert "blocks.group_2.block_1.id_path.weight" in converted
    assert "blocks.group_1.block_2.res_path.conv_4.bias" in converted
    assert "blocks.output.conv.weight" in converted
    arch = infer_dalle_arch(converted)
    assert arch == {
        "group_count": 4,
        "n_hid": 16,
        "n_blk_per_group": 2,
        "input_channels": 3,
        "vocab_size": 32,
    }
    encoder = DalleEncoder(**arch)
    encoder.load_state_dict(converted)  # strict: every key maps, none is left over
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    expected = _original_forward(original, x, group_count=4, n_blk=2)
    assert torch.allclose(encoder(x), expected, rtol=1e-5, atol=1e-5)

    path = tmp_path / "original_layout.pt"
    torch.save(original, path)
    tokenizer = DalleImageTokenizer.from_file(path)
    assert torch.equal(tokenizer.tokenize(x, 2), expected_tokens(original, x))


def expected_tokens(original: dict, x: torch.Tensor) -> torch.Tensor:
    """Reference codebook indices: original forward on logit-Laplace mapped pixels."""
    return _original_forward(original, x * 0.8 + 0.1, 4, 2).argmax(1).flatten(1)


def test_convert_transformers_layout_and_own_layout() -> None:
    original = _original_layout(seed=6, group_count=4, n_hid=16, n_blk=1, vocab=32)
    reference = convert_dalle_state_dict(original)
    hf = _to_transformers_layout(original)
    assert "blocks.group_1.group.block_1.res_path.path.conv_1.weight" in hf
    assert convert_dalle_state_dict(hf).keys() == reference.keys()
    prefixed = {f"image_codebook.{k}": v for k, v in hf.items()} | {"mim_head.bias": torch.zeros(3)}
    assert convert_dalle_state_dict(prefixed).keys() == reference.keys()
    assert convert_dalle_state_dict(reference).keys() == reference.keys()
