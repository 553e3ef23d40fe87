"""Opt-in attention probabilities: same outputs as the SDPA path, maps that are distributions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flava_zoo import create_model
from flava_zoo.models import record_attention


@pytest.mark.parametrize("fusion", ["merged", "co_attention"])
def test_recording_gives_the_same_outputs_and_valid_maps(fusion: str) -> None:
    torch.manual_seed(0)
    model = create_model("flava-tiny", fusion=fusion).eval()
    cfg = model.config
    x = torch.randn(3, 3, cfg.image.image_size, cfg.image.image_size)
    ids = torch.randint(5, cfg.text.vocab_size, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # padding in one row, and a column that is padding everywhere
    mask[:, 8] = 0
    with torch.no_grad():
        plain = model(pixel_values=x, input_ids=ids, attention_mask=mask)
        with record_attention(model) as rec:
            recorded = model(pixel_values=x, input_ids=ids, attention_mask=mask)
    for a, b in [
        (plain.image.last_hidden_state, recorded.image.last_hidden_state),
        (plain.text.last_hidden_state, recorded.text.last_hidden_state),
        (plain.multimodal.last_hidden_state, recorded.multimodal.last_hidden_state),
    ]:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    n_img = 1 + cfg.image.num_patches
    blocks = cfg.image.num_layers + cfg.text.num_layers
    blocks += cfg.multimodal.num_layers * (1 if fusion == "merged" else 4)
    assert len(rec.calls) == len(rec.maps) == blocks
    for name, probs in rec.maps.items():
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
        assert probs.shape[:2] == (3, cfg.image.num_heads if name.startswith("image") else probs.shape[1])
    image = rec.maps["image_encoder.encoder.blocks.0.attn"]
    assert image.shape == (3, cfg.image.num_heads, n_img, n_img)
    text = rec.maps["text_encoder.encoder.blocks.0.attn"]
    assert float(text[1, :, :, 6:].abs().max()) == 0.0  # padded keys get no attention
    if fusion == "merged":
        fused = rec.maps["fusion_encoder.layers.encoder.blocks.0.attn"]
        assert fused.shape[-1] == 1 + n_img + 8  # the all-padding column is cut
        assert float(fused[1, :, :, 1 + n_img + 6 :].abs().max()) == 0.0


def test_recording_is_off_outside_the_block_and_keeps_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = create_model("flava-tiny").eval()
    cfg = model.config
    x = torch.randn(2, 3, cfg.image.image_size, cfg.image.image_size, requires_grad=True)
    ids = torch.randint(5, cfg.text.vocab_size, (2, 7))
    with record_attention(model, retain_grad=True) as rec:
        out = model(pixel_values=x, input_ids=ids, attention_mask=torch.ones_like(ids))
    out.multimodal.cls.sum().backward()
    grads = [p.grad for p in rec.maps.values()]
    assert all(g is not None and g.shape for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        model(pixel_values=x, input_ids=ids, attention_mask=torch.ones_like(ids))
    assert len(calls) == len(rec.maps) and len(rec.calls) == len(rec.maps)
