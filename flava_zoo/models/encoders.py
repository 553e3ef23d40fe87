"""The two unimodal towers: a ViT image encoder and a BERT-style text encoder.

Both return an :class:`EncoderOutput` holding the states after the final LayerNorm (what a
user reads and what the contrastive embedding comes from) and the states before it (what
FLAVA feeds the fusion encoder).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ImageEncoderConfig, TextEncoderConfig
from .layers import TransformerStack, key_padding_to_attn_mask, pad_to_length, trimmed_length


@dataclass
class EncoderOutput:
    """What one tower returns.

    ``last_hidden_state`` is ``(B, S, D)`` after the final LayerNorm; ``prenorm_state`` the
    same states before it (the fusion encoder's input, as in FLAVA); ``attention_mask`` the
    ``(B, S)`` keep-mask (``None`` for images, where every token is valid); ``embedding`` the
    ``(B, P)`` L2-normalised projection of the first token, filled in by :class:`FlavaModel`.
    """

    last_hidden_state: Tensor
    prenorm_state: Tensor
    attention_mask: Tensor | None = None
    embedding: Tensor | None = None


class PatchEmbedding(nn.Module):
    """Split an image into non-overlapping patches and project each to ``hidden_size``."""

    def __init__(self, config: ImageEncoderConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.num_channels = config.num_channels
        self.proj = nn.Conv2d(
            config.num_channels, config.hidden_size, config.patch_size, stride=config.patch_size
        )

    def forward(self, pixel_values: Tensor) -> Tensor:
        """``(B, C, H, W)`` to ``(B, H/p * W/p, D)``; checks the channel count and divisibility."""
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must be (batch, channels, height, width), got shape {tuple(pixel_values.shape)}"
            )
        _, c, h, w = pixel_values.shape
        if c != self.num_channels:
            raise ValueError(f"expected {self.num_channels} image channels, got {c}")
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"image size {h}x{w} is not divisible by patch size {self.patch_size}"
            )
        return self.proj(pixel_values).flatten(2).transpose(1, 2)


class ImageEncoder(nn.Module):
    """ViT: patch embedding, class token, learned position embeddings, pre-LN blocks.

    Position embeddings are learned at ``config.image_size`` and bicubically interpolated for
    other resolutions. A learned mask token replaces the patches selected by ``image_mask``
    (masked image modelling).
    """

    def __init__(self, config: ImageEncoderConfig) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.patch_embed = PatchEmbedding(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.num_patches, d))
        self.dropout = nn.Dropout(config.dropout)
        self.encoder = TransformerStack(
            d, config.num_layers, config.num_heads, config.intermediate_size,
            config.layer_norm_eps, config.dropout, config.attention_dropout,
        )
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)

    def position_embeddings(self, grid_h: int, grid_w: int) -> Tensor:
        """Position embeddings for a ``grid_h x grid_w`` patch grid, interpolated if needed."""
        g = self.config.grid_size
        if grid_h == g and grid_w == g:
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        d = patch_pos.shape[-1]
        patch_pos = patch_pos.reshape(1, g, g, d).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(
            patch_pos.float(), size=(grid_h, grid_w), mode="bicubic", align_corners=False
        ).to(cls_pos.dtype)
        return torch.cat([cls_pos, patch_pos.flatten(2).transpose(1, 2)], dim=1)

    def embed(self, pixel_values: Tensor, image_mask: Tensor | None = None) -> Tensor:
        """Patch, mask, prepend the class token and add positions: ``(B, 1+N, D)``."""
        x = self.patch_embed(pixel_values)
        b, n, _ = x.shape
        if image_mask is not None:
            if image_mask.shape != (b, n):
                raise ValueError(
                    f"image_mask must have shape (batch, patches) = {(b, n)}, got {tuple(image_mask.shape)}"
                )
            x = torch.where(image_mask[..., None].bool(), self.mask_token.to(x.dtype), x)
        x = torch.cat([self.cls_token.expand(b, -1, -1).to(x.dtype), x], dim=1)
        h, w = pixel_values.shape[-2:]
        p = self.config.patch_size
        return self.dropout(x + self.position_embeddings(h // p, w // p))

    def forward(self, pixel_values: Tensor, image_mask: Tensor | None = None) -> EncoderOutput:
        """Encode ``(B, C, H, W)`` images; ``image_mask`` ``(B, N)`` marks patches to mask."""
        states = self.encoder(self.embed(pixel_values, image_mask))
        return EncoderOutput(last_hidden_state=self.norm(states), prenorm_state=states)


class TextEmbedding(nn.Module):
    """BERT embeddings: token + position + segment, then LayerNorm and dropout."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.word = nn.Embedding(config.vocab_size, d, padding_idx=config.pad_token_id)
        self.position = nn.Embedding(config.max_position_embeddings, d)
        self.segment = nn.Embedding(config.type_vocab_size, d)
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """``(B, L)`` ids to ``(B, L, D)`` embeddings."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word(input_ids) + self.position(positions)[None]
        if token_type_ids is None:
            x = x + self.segment.weight[0]
        else:
            x = x + self.segment(token_type_ids)
        return self.dropout(self.norm(x))


class TextEncoder(nn.Module):
    """BERT-style text tower with pre-LN blocks and a final LayerNorm, as in FLAVA
    (or BERT's post-LN blocks with ``norm_first=False``).

    Trailing columns that are padding in every row are cut before the blocks run and the
    output is padded back with zeros, so a batch padded to 77 tokens costs what its longest
    caption costs. Outputs at padded positions are zero: they never depend on pad tokens.
    """

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = TextEmbedding(config)
        self.encoder = TransformerStack(
            config.hidden_size, config.num_layers, config.num_heads, config.intermediate_size,
            config.layer_norm_eps, config.dropout, config.attention_dropout, config.norm_first,
        )
        self.norm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            if config.norm_first
            else nn.Identity()
        )

    def check_inputs(
        self, input_ids: Tensor, attention_mask: Tensor | None, token_type_ids: Tensor | None
    ) -> Tensor:
        """Validate shapes, dtypes and id ranges; return a boolean ``(B, L)`` keep-mask."""
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        if input_ids.dtype.is_floating_point:
            raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        b, length = input_ids.shape
        if length > self.config.max_position_embeddings:
            raise ValueError(
                f"text length {length} exceeds max_position_embeddings {self.config.max_position_embeddings}"
            )
        if input_ids.numel():
            hi, lo = int(input_ids.max()), int(input_ids.min())
            if hi >= self.config.vocab_size or lo < 0:
                bad = hi if hi >= self.config.vocab_size else lo
                raise ValueError(
                    f"token id {bad} is outside the vocabulary (vocab_size {self.config.vocab_size})"
                )
        if token_type_ids is not None and token_type_ids.shape != input_ids.shape:
            raise ValueError(
                f"token_type_ids shape {tuple(token_type_ids.shape)} does not match input_ids {tuple(input_ids.shape)}"
            )
        if attention_mask is None:
            return torch.ones_like(input_ids, dtype=torch.bool)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} does not match input_ids {tuple(input_ids.shape)}"
            )
        return attention_mask.bool()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> EncoderOutput:
        """Encode ``(B, L)`` token ids; ``attention_mask`` is 1 for tokens, 0 for padding."""
        keep = self.check_inputs(input_ids, attention_mask, token_type_ids)
        full_length = input_ids.shape[1]
        length = trimmed_length(keep)
        ids, mask = input_ids[:, :length], keep[:, :length]
        types = None if token_type_ids is None else token_type_ids[:, :length]
        states = self.encoder(self.embeddings(ids, types), key_padding_to_attn_mask(mask))
        zero = mask[..., None]
        out = self.norm(states).masked_fill(~zero, 0.0)
        states = states.masked_fill(~zero, 0.0)
        return EncoderOutput(
            last_hidden_state=pad_to_length(out, full_length),
            prenorm_state=pad_to_length(states, full_length),
            attention_mask=keep,
        )

