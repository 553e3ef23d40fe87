"""Parity with transformers' FLAVA: converted weights reproduce its outputs to 1e-4.

transformers' FlavaModel is built at a small config with seeded random weights, every
parameter moved away from its init (LayerNorms, zero-initialised biases, class, mask and
position tokens), so a mapping error in any of them shows up in the outputs.
"""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from flava_zoo import FlavaModel, create_model, get_config  # noqa: E402
from flava_zoo.interop import (  # noqa: E402
    config_from_transformers,
    convert_transformers_flava_state_dict,
    load_transformers_flava,
)

TOL = 1e-4
IMAGE, PATCH, IMAGE_VOCAB, TEXT_VOCAB = 32, 8, 64, 200
HEADS = {"mim_head", "mlm_head", "itm_head", "mmm_image_head", "mmm_text_head", "image_codebook"}


def hf_config(**overrides):
    """Small, with a different width per tower so that swapped keys fail on shape."""
    return transformers.FlavaConfig(
        image_config=dict(
            image_size=IMAGE,
            patch_size=PATCH,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            vocab_size=IMAGE_VOCAB,
        ),
        text_config=dict(
            vocab_size=TEXT_VOCAB,
            max_position_embeddings=32,
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=96,
        ),
        multimodal_config=dict(
            hidden_size=56, num_hidden_layers=2, num_attention_heads=4, intermediate_size=112
        ),
        hidden_size=56,
        projection_dim=32,
        init_codebook=False,
        **overrides,
    )


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(0.1 * torch.randn(p.shape, generator=g))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    theirs = transformers.FlavaModel(hf_config()).eval()
    perturb(theirs, seed=1)
    ours = load_transformers_flava(theirs).eval()
    return theirs, ours


def make_inputs(padded: bool, seed: int = 0):
    """Three captions of 9, 6 and 3 tokens in 12 columns (the last 3 are padding everywhere).

    Padded positions hold random, non-pad ids: no output may read them.
    """
    g = torch.Generator().manual_seed(seed)
    b, length = 3, 12
    pixel_values = torch.randn(b, 3, IMAGE, IMAGE, generator=g)
    input_ids = torch.randint(1, TEXT_VOCAB, (b, length), generator=g)
    if not padded:
        return pixel_values, input_ids, None, None
    columns = torch.arange(length)[None]
    attention_mask = (columns < torch.tensor([9, 6, 3])[:, None]).long()
    token_type_ids = (columns >= torch.tensor([5, 4, 1])[:, None]).long() * attention_mask
    return pixel_values, input_ids, attention_mask, token_type_ids


def compare(theirs, ours, pixel_values, input_ids, attention_mask, token_type_ids, masked=None):
    """Max abs differences of every output both models define, at the positions they define."""
    with torch.no_grad():
        hf = theirs(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            bool_masked_pos=masked,
        )
        out = ours(
            pixel_values=pixel_values,
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            image_mask=masked,
        )
        hf_image = F.normalize(theirs.image_projection(hf.image_embeddings[:, 0]), dim=-1)
        hf_text = F.normalize(theirs.text_projection(hf.text_embeddings[:, 0]), dim=-1)
    b, length = input_ids.shape
    keep = (
        torch.ones(b, length, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    )
    image_tokens = hf.image_embeddings.shape[1]
    mm_keep = torch.cat([torch.ones(b, 1 + image_tokens, dtype=torch.bool), keep], dim=1)
    assert torch.equal(out.multimodal.attention_mask, mm_keep)
    assert out.multimodal.num_image_tokens == image_tokens
    # By design ours is zero wherever the text is padding.
    assert not out.text.last_hidden_state[~keep].any()
    assert not out.multimodal.last_hidden_state[~mm_keep].any()
    return {
        "image": max_diff(out.image.last_hidden_state, hf.image_embeddings),
        "image_prenorm": max_diff(out.image.prenorm_state, hf.image_output.hidden_states[-1]),
        "text": max_diff(out.text.last_hidden_state[keep], hf.text_embeddings[keep]),
        "multimodal": max_diff(
            out.multimodal.last_hidden_state[mm_keep], hf.multimodal_embeddings[mm_keep]
        ),
        "image_embedding": max_diff(out.image.embedding, hf_image),
        "text_embedding": max_diff(out.text.embedding, hf_text),
    }


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
def test_outputs_match_transformers(models, padded):
    theirs, ours = models
    diffs = compare(theirs, ours, *make_inputs(padded))
    assert max(diffs.values()) < TOL, diffs


def test_masked_image_matches_bool_masked_pos(models):
    theirs, ours = models
    pixel_values, input_ids, attention_mask, token_type_ids = make_inputs(padded=True, seed=1)
    g = torch.Generator().manual_seed(2)
    masked = torch.rand(3, (IMAGE // PATCH) ** 2, generator=g) < 0.4
    assert masked.any() and not masked.all()
    diffs = compare(
        theirs, ours, pixel_values, input_ids, attention_mask, token_type_ids, masked=masked
    )
    assert max(diffs.values()) < TOL, diffs
    with torch.no_grad():
        unmasked = ours.encode_image(pixel_values).last_hidden_state
        masked_out = ours.encode_image(pixel_values, masked).last_hidden_state
    assert max_diff(unmasked, masked_out) > 1e-2  # the mask token is not a no-op


def test_other_resolution_interpolates_like_transformers(models):
    theirs, ours = models
    pixel_values = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        hf = theirs.image_model(pixel_values, interpolate_pos_encoding=True).last_hidden_state
        out = ours.encode_image(pixel_values).last_hidden_state
    assert out.shape == (2, 1 + (48 // PATCH) ** 2, 64)
    assert max_diff(out, hf) < TOL


def test_contrastive_features_and_logit_scale(models):
    """transformers' get_*_features project every token; ours keeps the class token's."""
    theirs, ours = models
    pixel_values, input_ids, attention_mask, _ = make_inputs(padded=True)
    with torch.no_grad():
        hf_image = theirs.get_image_features(pixel_values=pixel_values).pooler_output[:, 0]
        hf_text = theirs.get_text_features(
            input_ids=input_ids, attention_mask=attention_mask
        ).pooler_output[:, 0]
        image = ours.encode_image(pixel_values).embedding
        text = ours.encode_text(input_ids, attention_mask).embedding
    assert max_diff(image, F.normalize(hf_image, dim=-1)) < TOL
    assert max_diff(text, F.normalize(hf_text, dim=-1)) < TOL
    assert (
        ours.logit_scale.item() == theirs.logit_scale.item() != hf_config().logit_scale_init_value
    )
    assert math.isclose(ours.scale().item(), theirs.logit_scale.exp().item(), rel_tol=1e-6)


def test_loaded_model_owns_float32_copies(models):
    theirs, ours = models
    assert all(p.dtype == torch.float32 and p.requires_grad for p in ours.parameters())
    assert not any(p.is_meta for p in ours.parameters())
    mine = ours.image_encoder.cls_token
    assert mine.data_ptr() != theirs.image_model.embeddings.cls_token.data_ptr()


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_pretraining_layout_splits_backbone_and_heads(models, no_network):
    """``FlavaForPreTraining`` keys (``flava.`` prefix, heads, a codebook) convert without downloads."""
    torch.manual_seed(0)
    cfg = hf_config()
    codebook = transformers.FlavaImageCodebook(
        transformers.FlavaImageCodebookConfig(
            hidden_size=8, num_blocks_per_group=1, vocab_size=IMAGE_VOCAB
        )
    )
    pretraining = transformers.FlavaForPreTraining(cfg, image_codebook=codebook).eval()
    theirs, _ = models
    pretraining.flava.load_state_dict(theirs.state_dict())
    state = dict(pretraining.state_dict())
    state["flava.text_model.embeddings.position_ids"] = torch.arange(32)[None]  # older checkpoints
    config = config_from_transformers(cfg)

    converted = convert_transformers_flava_state_dict(state, config)
    assert set(converted.heads) == {k for k in state if not k.startswith("flava.")}
    assert {k.split(".")[0] for k in converted.heads} == HEADS
    assert converted.heads["mlm_head.decoder.weight"] is state["mlm_head.decoder.weight"]
    assert sorted(converted.ignored) == sorted(
        [
            f"flava.{t}_model.pooler.dense.{p}"
            for t in ("image", "text", "multimodal")
            for p in ("weight", "bias")
        ]
        + ["flava.text_model.embeddings.position_ids"]
    )
    assert converted.filled == []
    direct = convert_transformers_flava_state_dict(theirs.state_dict(), config)
    assert direct.heads == {}
    assert set(direct.model) == set(converted.model)
    assert all(torch.equal(direct.model[k], converted.model[k]) for k in direct.model)

    ours = load_transformers_flava(pretraining).eval()
    pixel_values, input_ids, attention_mask, token_type_ids = make_inputs(padded=True)
    diffs = compare(
        pretraining.flava, ours, pixel_values, input_ids, attention_mask, token_type_ids
    )
    assert max(diffs.values()) < TOL, diffs


def test_qkv_is_query_key_value_stacked(models):
    theirs, _ = models
    converted = convert_transformers_flava_state_dict(
        theirs.state_dict(), config_from_transformers(theirs.config)
    )
    attn = theirs.multimodal_model.encoder.layer[1].attention.attention
    qkv = converted.model["fusion_encoder.layers.encoder.blocks.1.attn.qkv.weight"]
    assert torch.equal(qkv, torch.cat([attn.query.weight, attn.key.weight, attn.value.weight]))


def test_image_config_without_mask_token_fills_zeros():
    torch.manual_seed(0)
    cfg = hf_config()
    cfg.image_config.mask_token = False
    theirs = transformers.FlavaModel(cfg)
    assert "image_model.embeddings.mask_token" not in theirs.state_dict()
    converted = convert_transformers_flava_state_dict(
        theirs.state_dict(), config_from_transformers(cfg)
    )
    assert converted.filled == ["image_encoder.mask_token"]
    assert not converted.model["image_encoder.mask_token"].any()


@pytest.fixture(scope="module")
def small_state(models):
    theirs, _ = models
    return dict(theirs.state_dict()), config_from_transformers(theirs.config)


def test_unexpected_key_raises(small_state):
    state, config = small_state
    with pytest.raises(ValueError, match="classifier.weight"):
        convert_transformers_flava_state_dict(
            {**state, "classifier.weight": torch.zeros(2)}, config
        )


def test_missing_key_raises(small_state):
    state, config = small_state
    state = {k: v for k, v in state.items() if k != "text_model.layernorm.weight"}
    with pytest.raises(ValueError, match="text_encoder.norm.weight"):
        convert_transformers_flava_state_dict(state, config)


def test_missing_value_projection_raises(small_state):
    state, config = small_state
    key = "image_model.encoder.layer.0.attention.attention.value.bias"
    state = {k: v for k, v in state.items() if k != key}
    with pytest.raises(ValueError, match=r"image_encoder.encoder.blocks.0.attn.qkv.bias.*value"):
        convert_transformers_flava_state_dict(state, config)


def test_prefixed_and_bare_duplicate_raises(small_state):
    state, config = small_state
    with pytest.raises(ValueError, match="both map to 'logit_scale'"):
        convert_transformers_flava_state_dict(
            {**state, "flava.logit_scale": state["logit_scale"]}, config
        )


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"text__num_layers": 1}, "no place.*text_encoder.encoder.blocks.1"),
        ({"multimodal__num_layers": 3}, "missing.*fusion_encoder.layers.encoder.blocks.2"),
        ({"vocab_size": 300}, "shape mismatch.*text_encoder.embeddings.word.weight"),
        ({"fusion": "co_attention"}, "merged fusion"),
    ],
)
def test_config_that_does_not_fit_raises(small_state, override, match):
    state, config = small_state
    with pytest.raises(ValueError, match=match):
        convert_transformers_flava_state_dict(state, config.replace(**override))


def test_bare_state_dict_needs_a_config(small_state):
    state, config = small_state
    with pytest.raises(ValueError, match="needs a config"):
        load_transformers_flava(state)
    assert isinstance(load_transformers_flava(state, config), FlavaModel)


def test_config_from_transformers_maps_every_field():
    config = config_from_transformers(hf_config(logit_scale_init_value=2.0))
    assert (config.image.image_size, config.image.patch_size, config.image.num_channels) == (
        32,
        8,
        3,
    )
    assert (config.image.hidden_size, config.image.num_layers, config.image.num_heads) == (64, 2, 4)
    assert config.image.intermediate_size == 128
    assert (
        config.text.vocab_size,
        config.text.max_position_embeddings,
        config.text.type_vocab_size,
    ) == (200, 32, 2)
    assert (config.text.hidden_size, config.text.intermediate_size, config.text.pad_token_id) == (
        48,
        96,
        0,
    )
    assert (
        config.multimodal.hidden_size,
        config.multimodal.num_layers,
        config.multimodal.intermediate_size,
    ) == (56, 2, 112)
    assert (config.projection_dim, config.logit_scale_init, config.codebook_size) == (
        32,
        2.0,
        IMAGE_VOCAB,
    )
    assert config.fusion == "merged"
    assert config_from_transformers(hf_config().to_dict()) == config_from_transformers(hf_config())
    assert config_from_transformers(hf_config(), mim_target="codebook").mim_target == "codebook"


def test_default_transformers_config_is_flava_base():
    base = get_config("flava-base")
    config = config_from_transformers(transformers.FlavaConfig())
    assert math.isclose(
        config.logit_scale_init, base.logit_scale_init, abs_tol=1e-4
    )  # 2.6592 vs log(1/0.07)
    assert config.replace(logit_scale_init=base.logit_scale_init) == base
    # A saved config.json may hold only the fields that differ from the defaults.
    partial = config_from_transformers({"text_config": {"num_hidden_layers": 3}})
    assert partial.replace(logit_scale_init=base.logit_scale_init) == base.replace(
        text__num_layers=3
    )


@pytest.mark.parametrize(
    ("section", "values", "match"),
    [
        ("text_config", {"hidden_act": "gelu_new"}, "text_config.hidden_act"),
        ("multimodal_config", {"hidden_act": "relu"}, "multimodal_config.hidden_act"),
        ("image_config", {"qkv_bias": False}, "image_config.qkv_bias"),
        ("multimodal_config", {"use_cls_token": False}, "multimodal_config.use_cls_token"),
        ("image_config", {"image_size": [224, 160]}, "image_config.image_size"),
    ],
)
def test_unsupported_transformers_config_raises(section, values, match):
    with pytest.raises(ValueError, match=match):
        config_from_transformers({section: values})


def test_flava_base_matches_transformers_parameter_count():
    """Ours has no tower poolers; everything else is the same size, key for key."""
    with torch.device("meta"):
        ours = create_model("flava-base")
        theirs = transformers.FlavaModel(transformers.FlavaConfig())
    poolers = sum(p.numel() for name, p in theirs.named_parameters() if ".pooler." in name)
    assert poolers == 3 * (768 * 768 + 768)
    assert ours.num_parameters() == theirs.num_parameters() - poolers
    converted = convert_transformers_flava_state_dict(theirs.state_dict(), get_config("flava-base"))
    assert len(converted.ignored) == 6 and converted.filled == []
