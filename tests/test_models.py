"""The backbone: shapes for every size, padding invariance, interpolation, determinism, errors."""

from __future__ import annotations

import pytest
import torch

import flava_zoo
from flava_zoo import FlavaConfig, create_model, get_config, list_models
from flava_zoo.config import FUSION_TYPES


def tiny(**overrides):
    torch.manual_seed(0)
    return create_model("flava-tiny", **overrides).eval()


def batch(model, b=3, length=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    x = torch.randn(b, 3, cfg.image.image_size, cfg.image.image_size, generator=g)
    ids = torch.randint(5, cfg.text.vocab_size, (b, length), generator=g)
    am = torch.ones(b, length, dtype=torch.long)
    for i in range(b):
        am[i, length - 2 * i :] = 0 if i else 1
    ids[am == 0] = 0
    return x, ids, am


def test_list_models_has_named_sizes():
    assert {"flava-tiny", "flava-small", "flava-base", "flava-large"} <= set(list_models())
    assert list_models("flava-b*") == ["flava-base"]


@pytest.mark.parametrize("name", list_models())
def test_every_size_builds_with_expected_shapes(name):
    cfg = get_config(name)
    with torch.device("meta"):
        model = create_model(name)
        b, length = 2, 9
        x = torch.empty(b, 3, cfg.image.image_size, cfg.image.image_size)
        ids = torch.zeros(b, length, dtype=torch.long)
        am = torch.ones(b, length, dtype=torch.long)
        # meta tensors have no values, so the vocabulary check is skipped by calling the parts
        img = model.image_encoder(x)
        txt = model.text_encoder.encoder(model.text_encoder.embeddings(ids))
    n = 1 + cfg.image.num_patches
    assert img.last_hidden_state.shape == (b, n, cfg.image.hidden_size)
    assert txt.shape == (b, length, cfg.text.hidden_size)
    assert am.shape == (b, length)


def test_flava_base_matches_flava_full_parameter_count():
    with torch.device("meta"):
        model = create_model("flava-base")
    # FLAVA-full: 241.36M in transformers' FlavaModel, of which 1.77M are three unused poolers.
    assert abs(model.num_parameters() - 241.36e6) / 241.36e6 < 0.01


@pytest.mark.parametrize("fusion", FUSION_TYPES)
def test_tiny_forward_shapes(fusion):
    model = tiny(fusion=fusion)
    x, ids, am = batch(model)
    out = model(pixel_values=x, input_ids=ids, attention_mask=am)
    cfg = model.config
    n = 1 + cfg.image.num_patches
    assert out.image.last_hidden_state.shape == (3, n, cfg.image.hidden_size)
    assert out.text.last_hidden_state.shape == (3, 10, cfg.text.hidden_size)
    for emb in (out.image.embedding, out.text.embedding):
        assert emb.shape == (3, cfg.projection_dim)
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    if fusion == "none":
        assert out.multimodal is None
    else:
        mm = out.multimodal
        assert mm.last_hidden_state.shape == (3, 1 + n + 10, cfg.multimodal.hidden_size)
        assert mm.cls.shape == (3, cfg.multimodal.hidden_size)
        assert mm.image_states.shape[1] == n and mm.text_states.shape[1] == 10


def test_encode_image_and_text_alone_match_joint_forward():
    model = tiny()
    x, ids, am = batch(model)
    out = model(pixel_values=x, input_ids=ids, attention_mask=am)
    torch.testing.assert_close(model.encode_image(x).embedding, out.image.embedding)
    torch.testing.assert_close(model.encode_text(ids, am).embedding, out.text.embedding)


@pytest.mark.parametrize("fusion", ["merged", "co_attention"])
def test_padding_invariance(fusion):
    """Changing the tokens under padding, or adding more padding, changes no output."""
    model = tiny(fusion=fusion)
    x, ids, am = batch(model, length=12)
    out = model(pixel_values=x, input_ids=ids, attention_mask=am)
    noisy = ids.clone()
    noisy[am == 0] = torch.randint(5, 1000, (int((am == 0).sum()),))
    out2 = model(pixel_values=x, input_ids=noisy, attention_mask=am)
    for a, b in [
        (out.text.last_hidden_state, out2.text.last_hidden_state),
        (out.text.embedding, out2.text.embedding),
        (out.multimodal.last_hidden_state, out2.multimodal.last_hidden_state),
    ]:
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # Padding everything to a longer length leaves every real position unchanged.
    long_ids = torch.nn.functional.pad(ids, (0, 20))
    long_am = torch.nn.functional.pad(am, (0, 20))
    out3 = model(pixel_values=x, input_ids=long_ids, attention_mask=long_am)
    torch.testing.assert_close(
        out3.text.last_hidden_state[:, :12], out.text.last_hidden_state, atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(out3.multimodal.cls, out.multimodal.cls, atol=1e-5, rtol=1e-5)
    assert out3.text.last_hidden_state[:, 12:].abs().max() == 0


def test_single_row_equals_its_slice_of_a_padded_batch():
    model = tiny()
    x, ids, am = batch(model, length=12)
    out = model(pixel_values=x, input_ids=ids, attention_mask=am)
    i = 2
    n = int(am[i].sum())
    alone = model(pixel_values=x[i : i + 1], input_ids=ids[i : i + 1, :n])
    torch.testing.assert_close(alone.text.embedding[0], out.text.embedding[i], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone.multimodal.cls[0], out.multimodal.cls[i], atol=1e-5, rtol=1e-5)


def test_position_interpolation_to_other_resolutions():
    model = tiny()
    for size in (32, 96, (64, 128)):
        h, w = (size, size) if isinstance(size, int) else size
        out = model.encode_image(torch.randn(2, 3, h, w))
        assert out.last_hidden_state.shape[1] == 1 + (h // 16) * (w // 16)
    # at the training size nothing is interpolated
    pos = model.image_encoder.position_embeddings(4, 4)
    assert pos is model.image_encoder.pos_embed
    # interpolating to the same grid through the bicubic path is the identity
    interp = torch.nn.functional.interpolate(
        model.image_encoder.pos_embed[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2),
        size=(4, 4),
        mode="bicubic",
        align_corners=False,
    )
    torch.testing.assert_close(
        interp.flatten(2).transpose(1, 2), model.image_encoder.pos_embed[:, 1:]
    )


def test_image_mask_replaces_patches_with_mask_token():
    model = tiny()
    x = torch.randn(2, 3, 64, 64)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, :6] = True
    a = model.encode_image(x, mask)
    # the masked patches' content no longer matters
    x2 = x.clone()
    x2[:, :, :16, :] = torch.randn(2, 3, 16, 64)  # first grid row = patches 0..3, all masked
    c = model.encode_image(x2, mask)
    torch.testing.assert_close(a.last_hidden_state, c.last_hidden_state)
    assert not torch.allclose(
        model.encode_image(x2).last_hidden_state, model.encode_image(x).last_hidden_state
    )


def test_determinism_under_a_seed():
    a, b = tiny(), tiny()
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    x, ids, am = batch(a)
    torch.testing.assert_close(
        a(pixel_values=x, input_ids=ids, attention_mask=am).multimodal.last_hidden_state,
        b(pixel_values=x, input_ids=ids, attention_mask=am).multimodal.last_hidden_state,
    )


@pytest.mark.parametrize("fusion", FUSION_TYPES)
def test_every_parameter_gets_a_gradient(fusion):
    model = tiny(fusion=fusion).train()
    x, ids, am = batch(model)
    out = model(
        pixel_values=x, input_ids=ids, attention_mask=am, image_mask=torch.rand(3, 16) < 0.3
    )
    loss = (out.image.embedding @ out.text.embedding.T * model.scale()).logsumexp(-1).mean()
    if out.multimodal is not None:
        loss = loss + out.multimodal.last_hidden_state.pow(2).mean()
    loss = loss + out.image.last_hidden_state.mean() + out.text.last_hidden_state.mean()
    loss.backward()
    missing = [
        n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert missing == []


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = create_model("flava-tiny").train()
    ckpt = create_model("flava-tiny", gradient_checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x, ids, am = batch(plain)
    for m in (plain, ckpt):
        out = m(pixel_values=x, input_ids=ids, attention_mask=am)
        out.multimodal.last_hidden_state.pow(2).mean().backward()
    for (n, p), (_, q) in zip(plain.named_parameters(), ckpt.named_parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=n)


def test_bf16_autocast_runs_and_stays_close():
    model = tiny()
    x, ids, am = batch(model)
    ref = model(pixel_values=x, input_ids=ids, attention_mask=am)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(pixel_values=x, input_ids=ids, attention_mask=am)
    assert out.multimodal.last_hidden_state.dtype == torch.bfloat16
    assert (out.image.embedding.float() - ref.image.embedding).abs().max() < 0.1
    assert torch.isfinite(out.multimodal.last_hidden_state.float()).all()


def test_config_round_trip_and_overrides():
    cfg = get_config("flava-tiny", fusion="co_attention", image_size=32, text__num_layers=3)
    assert cfg.fusion == "co_attention" and cfg.image.image_size == 32 and cfg.text.num_layers == 3
    assert FlavaConfig.from_dict(cfg.to_dict()) == cfg
    model = create_model("flava-tiny", **{"multimodal.num_layers": 1})
    assert len(model.fusion_encoder.layers.encoder.blocks) == 1


def test_save_and_load_pretrained(tmp_path):
    model = tiny(fusion="co_attention")
    flava_zoo.save_pretrained(model, tmp_path / "export")
    loaded = create_model(tmp_path / "export").eval()
    assert loaded.config == model.config
    x, ids, am = batch(model)
    torch.testing.assert_close(
        loaded(pixel_values=x, input_ids=ids, attention_mask=am).multimodal.cls,
        model(pixel_values=x, input_ids=ids, attention_mask=am).multimodal.cls,
    )


# ---- bad input -------------------------------------------------------------------------


def test_image_size_not_divisible_by_patch_size():
    with pytest.raises(ValueError, match="image size 100 is not divisible by patch size 16"):
        get_config("flava-base", image_size=100)
    model = tiny()
    with pytest.raises(ValueError, match="not divisible by patch size 16"):
        model.encode_image(torch.randn(1, 3, 60, 64))


def test_wrong_channel_count():
    with pytest.raises(ValueError, match="expected 3 image channels, got 1"):
        tiny().encode_image(torch.randn(2, 1, 64, 64))


def test_token_id_out_of_vocabulary():
    model = tiny()
    ids = torch.tensor([[2, 5, 1024]])
    with pytest.raises(ValueError, match="token id 1024 is outside the vocabulary"):
        model.encode_text(ids)
    with pytest.raises(TypeError, match="integer"):
        model.encode_text(ids.float())


def test_batch_sizes_differ():
    model = tiny()
    with pytest.raises(ValueError, match="image batch size 2 and text batch size 3 differ"):
        model(pixel_values=torch.randn(2, 3, 64, 64), input_ids=torch.ones(3, 5, dtype=torch.long))


def test_attention_mask_of_wrong_shape():
    model = tiny()
    with pytest.raises(
        ValueError, match=r"attention_mask shape \(2, 4\) does not match input_ids \(2, 5\)"
    ):
        model.encode_text(torch.ones(2, 5, dtype=torch.long), torch.ones(2, 4))


def test_unknown_model_name_lists_close_matches():
    with pytest.raises(ValueError, match=r"unknown model 'flava-bse'.*did you mean \['flava-base'"):
        create_model("flava-bse")


def test_unknown_override_key():
    with pytest.raises(ValueError, match="unknown override key 'fuson'.*fusion"):
        create_model("flava-tiny", fuson="merged")
    with pytest.raises(ValueError, match="ambiguous"):
        create_model("flava-tiny", hidden_size=64)
    with pytest.raises(ValueError, match="fusion must be one of"):
        create_model("flava-tiny", fusion="early")
