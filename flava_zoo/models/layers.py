"""Transformer building blocks shared by the three encoders.

Every attention call goes through :func:`torch.nn.functional.scaled_dot_product_attention`,
so PyTorch picks a fused kernel (flash or memory-efficient on GPU, the flash CPU kernel
here) and never materialises the attention matrix in the backward graph. Blocks are
pre-LayerNorm, as in FLAVA and ViT.

The one exception is opt-in: inside :func:`record_attention`, the attention modules of the
given model compute ``softmax(q k^T / sqrt(d) + mask) v`` explicitly and hand the
probabilities to an :class:`AttentionRecorder` (for the probes: attention maps, and with
``retain_grad`` their gradients for gradient-weighted relevance). Outside it, the code
path is SDPA's, unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def key_padding_to_attn_mask(key_mask: Tensor | None) -> Tensor | None:
    """Turn a ``(B, L)`` keep-mask (1 = attend) into an SDPA boolean mask ``(B, 1, 1, L)``.

    Returns ``None`` when every key is valid so that SDPA may take its unmasked fast path.
    """
    if key_mask is None:
        return None
    key_mask = key_mask.bool()
    if bool(key_mask.all()):
        return None
    return key_mask[:, None, None, :]


class AttentionRecorder:
    """The attention probabilities of one or more forward passes, by module name.

    ``maps[name]`` is the ``(B, heads, queries, keys)`` probability tensor of the last call of
    the attention module ``name`` (its name in the model, e.g.
    ``fusion_encoder.layers.encoder.blocks.0.attn``); ``calls`` lists every call in order.
    With ``retain_grad``, probabilities that require grad keep their ``.grad`` after a
    backward pass. The fusion encoder's maps cover ``[cls_mm; image tokens; text tokens]``
    with the text cut after the last column that holds a token in any row.
    """

    def __init__(self, retain_grad: bool = False) -> None:
        self.retain_grad = retain_grad
        self.maps: dict[str, Tensor] = {}
        self.calls: list[tuple[str, Tensor]] = []

    def __call__(self, name: str, probs: Tensor) -> None:
        if self.retain_grad and probs.requires_grad:
            probs.retain_grad()
        self.maps[name] = probs
        self.calls.append((name, probs))

    def clear(self) -> None:
        """Forget what was recorded."""
        self.maps.clear()
        self.calls.clear()


@contextmanager
def record_attention(model: nn.Module, retain_grad: bool = False) -> Iterator[AttentionRecorder]:
    """Record the attention probabilities of every attention module of ``model`` while the
    block runs (see :class:`AttentionRecorder`); the explicit ``softmax(q k^T) v`` it needs
    gives the same outputs as SDPA to float rounding, and ends with the block."""
    recorder = AttentionRecorder(retain_grad)
    modules = [
        (name, m) for name, m in model.named_modules() if isinstance(m, (SelfAttention, CrossAttention))
    ]
    for name, m in modules:
        m._recorder = (name, recorder)
    try:
        yield recorder
    finally:
        for _, m in modules:
            m._recorder = None


def _explicit_attention(
    module: nn.Module, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None
) -> Tensor:
    """``softmax(q k^T / sqrt(d) + mask) v``, handing the probabilities to the recorder."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    probs = scores.softmax(dim=-1)
    name, recorder = module._recorder
    recorder(name, probs)
    if module.training and module.dropout > 0:
        probs = F.dropout(probs, module.dropout)
    return probs @ v


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused input projection for queries, keys and values."""

    _recorder: tuple[str, AttentionRecorder] | None = None

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """Attend over ``x`` of shape ``(B, L, D)``; ``attn_mask`` as from :func:`key_padding_to_attn_mask`."""
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        if self._recorder is not None:
            out = _explicit_attention(self, qkv[0], qkv[1], qkv[2], attn_mask)
        else:
            out = F.scaled_dot_product_attention(
                qkv[0], qkv[1], qkv[2], attn_mask=attn_mask,
                dropout_p=self.dropout if self.training else 0.0,
            )
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class CrossAttention(nn.Module):
    """Multi-head attention of one stream's queries over another stream's keys and values."""

    _recorder: tuple[str, AttentionRecorder] | None = None

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """Queries from ``x`` ``(B, L, D)``, keys and values from ``context`` ``(B, S, D)``."""
        b, n, d = x.shape
        s = context.shape[1]
        h = self.num_heads
        q = self.q(x).view(b, n, h, d // h).transpose(1, 2)
        kv = self.kv(context).view(b, s, 2, h, d // h).permute(2, 0, 3, 1, 4)
        if self._recorder is not None:
            out = _explicit_attention(self, q, kv[0], kv[1], attn_mask)
        else:
            out = F.scaled_dot_product_attention(
                q, kv[0], kv[1], attn_mask=attn_mask,
                dropout_p=self.dropout if self.training else 0.0,
            )
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    """The position-wise feed-forward network: Linear, exact GELU, Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the feed-forward network token by token."""
        return self.fc2(F.gelu(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``.

    With ``norm_first=False`` it is BERT's post-LayerNorm block instead:
    ``ln(x + attn(x))``, then ``ln(x + mlp(x))``, so BERT checkpoints load exactly.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_hidden: int,
        eps: float = 1e-12,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        norm_first: bool = True,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = SelfAttention(dim, num_heads, attention_dropout)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, mlp_hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """Run the block on ``x`` ``(B, L, D)``."""
        if not self.norm_first:
            x = self.norm1(x + self.drop(self.attn(x, attn_mask)))
            return self.norm2(x + self.drop(self.mlp(x)))
        x = x + self.drop(self.attn(self.norm1(x), attn_mask))
        return x + self.drop(self.mlp(self.norm2(x)))


class TransformerStack(nn.Module):
    """A sequence of :class:`TransformerBlock` with optional activation checkpointing."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_hidden: int,
        eps: float = 1e-12,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        norm_first: bool = True,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, num_heads, mlp_hidden, eps, dropout, attention_dropout, norm_first)
            for _ in range(depth)
        )
        self.gradient_checkpointing = False

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """Run every block; recompute activations in backward when checkpointing is on."""
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, attn_mask, use_reentrant=False)
            else:
                x = block(x, attn_mask)
        return x


def trimmed_length(keep: Tensor) -> int:
    """Index one past the last column that holds a real token in any row (at least 1)."""
    if keep.numel() == 0:
        return keep.shape[1]
    cols = keep.any(dim=0).nonzero()
    return int(cols[-1]) + 1 if len(cols) else 1


def pad_to_length(x: Tensor, length: int) -> Tensor:
    """Zero-pad ``(B, S, D)`` along ``S`` to ``length``."""
    if x.shape[1] == length:
        return x
    return F.pad(x, (0, 0, 0, length - x.shape[1]))
