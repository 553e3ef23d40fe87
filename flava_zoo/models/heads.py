"""Pretraining and task heads.

Prediction heads take hidden states that the caller has already gathered at the masked
positions, ``(M, D)``: vocabulary logits are computed only where a loss needs them.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class Pooler(nn.Module):
    """BERT's pooler: a dense layer with tanh over the class token."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, cls: Tensor) -> Tensor:
        """``(B, D)`` class-token states to pooled ``(B, D)`` features."""
        return self.dense(cls).tanh()


class MaskedPredictionHead(nn.Module):
    """Transform (dense, GELU, LayerNorm) then a linear decoder: BERT's and FLAVA's MLM head.

    Used for MLM and MMM-text (``out_features`` = text vocabulary), codebook MIM and
    MMM-image (``out_features`` = codebook size), and pixel MIM (``out_features`` =
    ``patch_size**2 * channels``, a regression output).
    """

    def __init__(self, dim: int, out_features: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.decoder = nn.Linear(dim, out_features)

    def forward(self, hidden: Tensor) -> Tensor:
        """``(..., D)`` states to ``(..., out_features)`` predictions."""
        return self.decoder(self.norm(F.gelu(self.dense(hidden))))


class ITMHead(nn.Module):
    """Image-text matching: pooled multimodal class token to two logits (no match, match)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.pooler = Pooler(dim)
        self.classifier = nn.Linear(dim, 2)

    def forward(self, cls: Tensor) -> Tensor:
        """``(B, D)`` multimodal class tokens to ``(B, 2)`` logits."""
        return self.classifier(self.pooler(cls))


class ClassificationHead(nn.Module):
    """A task head: pooler, dropout, then an MLP or linear classifier (regression when ``num_classes == 1``)."""

    def __init__(self, dim: int, num_classes: int, hidden: int | None = None, dropout: float = 0.1) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.pooler = Pooler(dim)
        self.dropout = nn.Dropout(dropout)
        if hidden:
            self.classifier = nn.Sequential(
                nn.Linear(dim, hidden), nn.GELU(), nn.LayerNorm(hidden), nn.Linear(hidden, num_classes)
            )
        else:
            self.classifier = nn.Linear(dim, num_classes)

    def forward(self, cls: Tensor) -> Tensor:
        """``(B, D)`` class tokens to ``(B, num_classes)`` logits."""
        return self.classifier(self.dropout(self.pooler(cls)))
