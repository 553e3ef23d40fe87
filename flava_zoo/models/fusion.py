"""The fusion encoder over ``[cls_mm; proj(image states); proj(text states)]``.

Fusion type is a switch, after Hendricks et al. 2021 ("Decoupling the role of data,
attention, and losses in multimodal transformers"):

* ``merged`` -- FLAVA's: one self-attention over the concatenated sequence;
* ``co_attention`` -- ViLBERT-style: an image stream (led by ``cls_mm``) and a text stream,
  each block self-attends within its stream, then cross-attends to the other;
* ``none`` -- no fusion encoder at all (a CLIP-like dual encoder; built by ``FlavaModel``).

Both real fusion types honour the text padding mask and lay out their output identically,
so every head reads position 0 as the multimodal class token, then the image tokens, then
the text tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..config import FusionEncoderConfig
from .layers import (
    MLP,
    CrossAttention,
    SelfAttention,
    TransformerStack,
    key_padding_to_attn_mask,
    pad_to_length,
    trimmed_length,
)


@dataclass
class FusionOutput:
    """The fused sequence ``(B, 1 + S_img + L, D)`` and its keep-mask ``(B, 1 + S_img + L)``.

    ``num_image_tokens`` is ``S_img`` (the image tower's class token plus its patches).
    Outputs at padded text positions are zero.
    """

    last_hidden_state: Tensor
    attention_mask: Tensor
    num_image_tokens: int

    @property
    def cls(self) -> Tensor:
        """The multimodal class token ``(B, D)``: the input of the ITM and task heads."""
        return self.last_hidden_state[:, 0]

    @property
    def image_states(self) -> Tensor:
        """Fused image tokens ``(B, S_img, D)``, the image tower's class token first."""
        return self.last_hidden_state[:, 1 : 1 + self.num_image_tokens]

    @property
    def text_states(self) -> Tensor:
        """Fused text tokens ``(B, L, D)``."""
        return self.last_hidden_state[:, 1 + self.num_image_tokens :]


class MergedFusion(nn.Module):
    """FLAVA's fusion: a pre-LN transformer over the concatenated sequence."""

    def __init__(self, config: FusionEncoderConfig) -> None:
        super().__init__()
        self.encoder = TransformerStack(
            config.hidden_size, config.num_layers, config.num_heads, config.intermediate_size,
            config.layer_norm_eps, config.dropout, config.attention_dropout,
        )
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, cls: Tensor, image: Tensor, text: Tensor, text_mask: Tensor) -> Tensor:
        """Fuse; returns ``(B, 1 + S_img + L, D)``."""
        b, s = image.shape[:2]
        x = torch.cat([cls, image, text], dim=1)
        keep = torch.cat([text_mask.new_ones(b, 1 + s), text_mask], dim=1)
        return self.norm(self.encoder(x, key_padding_to_attn_mask(keep)))


class CoAttentionBlock(nn.Module):
    """One ViLBERT-style layer: per-stream self-attention, cross-attention to the other stream, MLP."""

    def __init__(self, config: FusionEncoderConfig) -> None:
        super().__init__()
        d, h, eps = config.hidden_size, config.num_heads, config.layer_norm_eps
        self.streams = nn.ModuleDict()
        for name in ("image", "text"):
            self.streams[name] = nn.ModuleDict(
                {
                    "norm_self": nn.LayerNorm(d, eps=eps),
                    "self_attn": SelfAttention(d, h, config.attention_dropout),
                    "norm_cross": nn.LayerNorm(d, eps=eps),
                    "norm_context": nn.LayerNorm(d, eps=eps),
                    "cross_attn": CrossAttention(d, h, config.attention_dropout),
                    "norm_mlp": nn.LayerNorm(d, eps=eps),
                    "mlp": MLP(d, config.intermediate_size),
                }
            )
        self.drop = nn.Dropout(config.dropout)

    def forward(
        self, image: Tensor, text: Tensor, text_attn: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Update both streams; ``text_attn`` masks text padding wherever text is a key."""
        si, st = self.streams["image"], self.streams["text"]
        image = image + self.drop(si["self_attn"](si["norm_self"](image)))
        text = text + self.drop(st["self_attn"](st["norm_self"](text), text_attn))
        image_ctx, text_ctx = st["norm_context"](text), si["norm_context"](image)
        image = image + self.drop(si["cross_attn"](si["norm_cross"](image), image_ctx, text_attn))
        text = text + self.drop(st["cross_attn"](st["norm_cross"](text), text_ctx))
        image = image + self.drop(si["mlp"](si["norm_mlp"](image)))
        text = text + self.drop(st["mlp"](st["norm_mlp"](text)))
        return image, text


class CoAttentionFusion(nn.Module):
    """Two streams that exchange information only through cross-attention."""

    def __init__(self, config: FusionEncoderConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(CoAttentionBlock(config) for _ in range(config.num_layers))
        self.norm_image = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.norm_text = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False

    def forward(self, cls: Tensor, image: Tensor, text: Tensor, text_mask: Tensor) -> Tensor:
        """Fuse; returns ``(B, 1 + S_img + L, D)`` laid out as :class:`MergedFusion`'s."""
        image = torch.cat([cls, image], dim=1)
        text_attn = key_padding_to_attn_mask(text_mask)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                image, text = checkpoint(block, image, text, text_attn, use_reentrant=False)
            else:
                image, text = block(image, text, text_attn)
        return torch.cat([self.norm_image(image), self.norm_text(text)], dim=1)


class FusionEncoder(nn.Module):
    """Project both towers' states to the fusion width, prepend ``cls_mm`` and fuse.

    Text columns that are padding in every row are cut before fusing and restored (as
    zeros) afterwards, so padding costs nothing it need not.
    """

    def __init__(
        self, config: FusionEncoderConfig, fusion: str, image_dim: int, text_dim: int
    ) -> None:
        super().__init__()
        if fusion not in ("merged", "co_attention"):
            raise ValueError(f"FusionEncoder supports 'merged' and 'co_attention', got {fusion!r}")
        self.config = config
        self.fusion = fusion
        d = config.hidden_size
        self.image_proj = nn.Linear(image_dim, d)
        self.text_proj = nn.Linear(text_dim, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.layers = MergedFusion(config) if fusion == "merged" else CoAttentionFusion(config)

    def forward(self, image_states: Tensor, text_states: Tensor, text_mask: Tensor) -> FusionOutput:
        """Fuse ``(B, S_img, D_img)`` image and ``(B, L, D_txt)`` text states.

        ``text_mask`` ``(B, L)`` is 1 for tokens, 0 for padding.
        """
        b, s = image_states.shape[:2]
        if text_states.shape[0] != b:
            raise ValueError(
                f"image batch size {b} and text batch size {text_states.shape[0]} differ"
            )
        text_mask = text_mask.bool()
        full_length = text_states.shape[1]
        length = trimmed_length(text_mask)
        mask = text_mask[:, :length]
        image = self.image_proj(image_states)
        text = self.text_proj(text_states[:, :length])
        cls = self.cls_token.expand(b, -1, -1).to(image.dtype)
        fused = self.layers(cls, image, text, mask)
        keep = torch.cat([mask.new_ones(b, 1 + s), mask], dim=1)
        fused = pad_to_length(fused.masked_fill(~keep[..., None], 0.0), 1 + s + full_length)
        return FusionOutput(
            last_hidden_state=fused,
            attention_mask=torch.cat([text_mask.new_ones(b, 1 + s), text_mask], dim=1),
            num_image_tokens=s,
        )
