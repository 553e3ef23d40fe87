"""FLAVA: A Foundational Language And Vision Alignment Model (Singh et al., CVPR 2022,
arXiv 2112.04482).

An image tower and a text tower, each projected into one L2-normalised embedding space
with a learnable temperature (the contrastive, dual-encoder path), and a fusion encoder
over both towers' states (the multimodal path). The fusion type is a switch; see
:mod:`flava_zoo.models.fusion`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import FlavaConfig
from .encoders import EncoderOutput, ImageEncoder, TextEncoder
from .fusion import FusionEncoder, FusionOutput
from .layers import TransformerStack


@dataclass
class FlavaOutput:
    """Outputs of :meth:`FlavaModel.forward`; a part is ``None`` when its input was not given."""

    image: EncoderOutput | None = None
    text: EncoderOutput | None = None
    multimodal: FusionOutput | None = None


class FlavaModel(nn.Module):
    """The FLAVA backbone without pretraining heads.

    >>> model = FlavaModel(FlavaConfig())                       # doctest: +SKIP
    >>> out = model(pixel_values=x, input_ids=ids, attention_mask=am)  # doctest: +SKIP
    >>> out.image.embedding, out.text.embedding, out.multimodal.last_hidden_state  # doctest: +SKIP
    """

    def __init__(self, config: FlavaConfig) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = ImageEncoder(config.image)
        self.text_encoder = TextEncoder(config.text)
        self.image_projection = nn.Linear(config.image.hidden_size, config.projection_dim)
        self.text_projection = nn.Linear(config.text.hidden_size, config.projection_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        self.fusion_encoder = (
            None
            if config.fusion == "none"
            else FusionEncoder(
                config.multimodal, config.fusion, config.image.hidden_size, config.text.hidden_size
            )
        )
        self.apply(_init_weights)
        for name in ("cls_token", "mask_token", "pos_embed"):
            nn.init.trunc_normal_(getattr(self.image_encoder, name), std=0.02)
        if self.fusion_encoder is not None:
            nn.init.trunc_normal_(self.fusion_encoder.cls_token, std=0.02)
        self.set_gradient_checkpointing(config.gradient_checkpointing)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Turn activation checkpointing on or off in every transformer stack."""
        for module in self.modules():
            if isinstance(module, TransformerStack) or hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = enabled

    def scale(self) -> Tensor:
        """The contrastive logit multiplier ``exp(logit_scale)``, clamped at ``exp(logit_scale_max)``."""
        return self.logit_scale.clamp(max=self.config.logit_scale_max).exp()

    def encode_image(self, pixel_values: Tensor, image_mask: Tensor | None = None) -> EncoderOutput:
        """Run the image tower; ``embedding`` is the normalised projection of the class token."""
        out = self.image_encoder(pixel_values, image_mask)
        out.embedding = F.normalize(self.image_projection(out.last_hidden_state[:, 0]), dim=-1)
        return out

    def encode_text(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> EncoderOutput:
        """Run the text tower; ``embedding`` is the normalised projection of the class token."""
        out = self.text_encoder(input_ids, attention_mask, token_type_ids)
        out.embedding = F.normalize(self.text_projection(out.last_hidden_state[:, 0]), dim=-1)
        return out

    def fuse(self, image: EncoderOutput, text: EncoderOutput) -> FusionOutput:
        """Fuse two tower outputs (their pre-norm states, as FLAVA does)."""
        if self.fusion_encoder is None:
            raise ValueError("this model has fusion='none' (a dual encoder): there is no fusion encoder")
        return self.fusion_encoder(image.prenorm_state, text.prenorm_state, text.attention_mask)

    def forward(
        self,
        pixel_values: Tensor | None = None,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        image_mask: Tensor | None = None,
        fuse: bool = True,
    ) -> FlavaOutput:
        """Encode whichever modalities are given and, with both and ``fuse``, fuse them.

        ``pixel_values`` ``(B, C, H, W)``; ``input_ids`` ``(B, L)`` with ``attention_mask``
        (1 = token, 0 = padding) and optional ``token_type_ids``; ``image_mask`` ``(B, N)``
        replaces the marked patches by the mask token.
        """
        if pixel_values is None and input_ids is None:
            raise ValueError("give pixel_values, input_ids or both")
        if pixel_values is not None and input_ids is not None:
            if pixel_values.shape[0] != input_ids.shape[0]:
                raise ValueError(
                    f"image batch size {pixel_values.shape[0]} and text batch size "
                    f"{input_ids.shape[0]} differ"
                )
        out = FlavaOutput()
        if pixel_values is not None:
            out.image = self.encode_image(pixel_values, image_mask)
        if input_ids is not None:
            out.text = self.encode_text(input_ids, attention_mask, token_type_ids)
        if fuse and out.image is not None and out.text is not None and self.fusion_encoder is not None:
            out.multimodal = self.fuse(out.image, out.text)
        return out

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameters (optionally only those with ``requires_grad``)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
