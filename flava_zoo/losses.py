"""Pretraining and fine-tuning losses for FLAVA-style models.

Every function here is a pure function of tensors, so the model code, the Lightning module
and the tests call the same thing. The heads compute vocabulary logits only at the masked
positions, so the masked losses take ``(M, ...)`` inputs and stay defined (as a zero that
depends on the inputs, so DDP sees every parameter used) when a batch masks nothing.

The global contrastive loss follows CLIP/FLAVA: each process scores its local rows against
the embeddings of every process, gathered with gradients
(:func:`torch.distributed.nn.functional.all_gather`), so the negatives grow with the
global batch and the gradient equals the single-process one on the concatenated batch.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def _world_size_and_rank() -> tuple[int, int]:
    """World size and rank of the default process group, ``(1, 0)`` when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1, 0
    return dist.get_world_size(), dist.get_rank()


def _upcast(x: Tensor) -> Tensor:
    """``x`` in float32 when it is in a half-precision type, so losses are computed stably."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _zero_like_loss(x: Tensor) -> Tensor:
    """A zero that depends on ``x``, so autograd (and DDP) still see ``x`` as used."""
    return _upcast(x).sum() * 0.0


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` along dim 0 from all processes, letting gradients flow back.

    The backward pass sums, for each process, the gradients every process computed for its
    slice, which is what a loss over the global batch needs. Identity when
    ``torch.distributed`` is unavailable, not initialised or has a single process.
    Every process must pass a tensor of the same shape.
    """
    world_size, _ = _world_size_and_rank()
    if world_size == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def _check_embeddings(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor) -> None:
    """Raise a specific error when embeddings or the scale have unusable shapes."""
    if image_emb.dim() != 2 or text_emb.dim() != 2:
        raise ValueError(
            "expected 2-D embeddings (B, P), got image "
            f"{tuple(image_emb.shape)} and text {tuple(text_emb.shape)}"
        )
    if image_emb.shape != text_emb.shape:
        raise ValueError(
            f"image embeddings {tuple(image_emb.shape)} and text embeddings "
            f"{tuple(text_emb.shape)} must have the same shape (paired rows)"
        )
    if logit_scale.numel() != 1:
        raise ValueError(
            f"logit_scale must hold a single value, got shape {tuple(logit_scale.shape)}"
        )


def contrastive_logits(
    image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor
) -> tuple[Tensor, Tensor]:
    """Scaled cosine similarities ``(logits_per_image, logits_per_text)`` without gathering.

    For evaluation (retrieval, zero-shot) and for hard-negative mining: row ``i`` of
    ``logits_per_image`` scores image ``i`` against every text; ``logits_per_text`` is
    its transpose. Embeddings must already be L2-normalised; ``logit_scale`` is the
    multiplier (the exponentiated log-temperature), not its logarithm.
    """
    _check_embeddings(image_emb, text_emb, logit_scale)
    logits_per_image = logit_scale.reshape(()) * image_emb @ text_emb.t()
    return logits_per_image, logits_per_image.t()


def contrastive_loss(
    image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor, gather: bool = True
) -> Tensor:
    """Global symmetric InfoNCE loss of CLIP and FLAVA, as a 0-dim tensor.

    ``image_emb`` and ``text_emb`` are the local, L2-normalised ``(B, P)`` embeddings of
    paired samples; ``logit_scale`` is the temperature multiplier (0-dim, receives
    gradient). With ``gather`` and ``W`` processes, the local rows are scored against all
    ``W * B`` gathered rows of the other modality, the positive of local row ``i`` being
    global column ``rank * B + i``. The loss is the mean of the image-to-text and
    text-to-image cross-entropies. Averaged over processes (as DDP averages gradients), it
    equals the loss on the concatenated batch in one process. All processes must use the
    same ``B``.
    """
    _check_embeddings(image_emb, text_emb, logit_scale)
    scale = logit_scale.reshape(())
    if gather:
        _, rank = _world_size_and_rank()
        all_image = gather_with_grad(image_emb)
        all_text = gather_with_grad(text_emb)
    else:
        rank, all_image, all_text = 0, image_emb, text_emb
    batch_size = image_emb.shape[0]
    targets = torch.arange(batch_size, device=image_emb.device) + rank * batch_size
    logits_per_image = scale * image_emb @ all_text.t()
    logits_per_text = scale * text_emb @ all_image.t()
    loss_i2t = F.cross_entropy(_upcast(logits_per_image), targets)
    loss_t2i = F.cross_entropy(_upcast(logits_per_text), targets)
    return (loss_i2t + loss_t2i) / 2


def masked_prediction_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy over the masked positions only, for MLM, MMM-text and codebook MIM.

    ``logits`` is ``(M, V)`` for the ``M`` masked positions of the whole batch (heads compute
    vocabulary logits only there) and ``labels`` the ``(M,)`` target ids. With ``M == 0``
    the result is a zero that still depends on ``logits``, so DDP sees the head as used.
    """
    if logits.dim() != 2 or labels.dim() != 1 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"expected logits (M, V) and labels (M,), got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if logits.shape[0] == 0:
        return _zero_like_loss(logits)
    return F.cross_entropy(_upcast(logits), labels)


def patchify(pixel_values: Tensor, patch_size: int) -> Tensor:
    """Cut ``(B, C, H, W)`` images into ``(B, N, p*p*C)`` flattened patches.

    Patches come in row-major order (index ``row * W/p + col``), the order of a Conv2d
    patch embedding followed by ``flatten(2).transpose(1, 2)``, so patch ``n`` lines up
    with token ``n`` of the image encoder. Inside a patch the values are ordered
    ``(pixel row, pixel column, channel)``, as in MAE.
    """
    if pixel_values.dim() != 4:
        raise ValueError(f"expected images (B, C, H, W), got shape {tuple(pixel_values.shape)}")
    if patch_size < 1:
        raise ValueError(f"patch size must be positive, got {patch_size}")
    batch, channels, height, width = pixel_values.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"image size {height}x{width} is not divisible by patch size {patch_size}")
    rows, cols = height // patch_size, width // patch_size
    patches = pixel_values.reshape(batch, channels, rows, patch_size, cols, patch_size)
    patches = patches.permute(0, 2, 4, 3, 5, 1)
    return patches.reshape(batch, rows * cols, patch_size * patch_size * channels)


def normalized_pixel_targets(pixel_values: Tensor, patch_size: int, eps: float = 1e-6) -> Tensor:
    """MAE's "norm-pix" regression targets: each patch of :func:`patchify` standardised.

    Normalising every patch by its own mean and (unbiased) variance makes the target about
    local structure rather than brightness, which MAE found gives better representations.
    Returns ``(B, N, p*p*C)``, in float32 for half-precision input.
    """
    patches = _upcast(patchify(pixel_values, patch_size))
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()


def pixel_regression_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over the masked patches, both given as ``(M, p*p*C)``.

    The pixel-regression MIM target (the default when no codebook is supplied). With
    ``M == 0`` the result is a zero that still depends on ``pred``.
    """
    if pred.shape != target.shape or pred.dim() != 2:
        raise ValueError(
            f"expected pred and target of the same shape (M, p*p*C), got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if pred.shape[0] == 0:
        return _zero_like_loss(pred)
    return F.mse_loss(_upcast(pred), _upcast(target))


def itm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Two-way cross-entropy for image-text matching (label 1 = the pair matches)."""
    if logits.dim() != 2 or logits.shape[1] != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"expected ITM logits (B, 2) and labels (B,), got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if logits.shape[0] == 0:
        return _zero_like_loss(logits)
    return F.cross_entropy(_upcast(logits), labels)


def sample_itm_negatives(
    batch_size: int, similarity: Tensor | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """For each image ``i``, the index of a *different* sample whose text makes a negative pair.

    Without ``similarity`` the index is uniform over the other ``B - 1`` samples (in-batch
    negatives). With a ``(B, B)`` image-to-text similarity (e.g. detached contrastive
    logits), index ``j != i`` is drawn with probability ``softmax(similarity[i])`` restricted
    to the off-diagonal: hard negatives, as in ALBEF. Pass ``similarity.t()`` to draw an
    image for each text instead. Deterministic for a given ``generator``; returns a
    ``LongTensor (B,)``.
    """
    if batch_size < 2:
        raise ValueError(
            f"ITM negatives need at least 2 samples in the batch, got batch size {batch_size}"
        )
    if similarity is None:
        device = generator.device if generator is not None else torch.device("cpu")
        offsets = torch.randint(
            0, batch_size - 1, (batch_size,), generator=generator, device=device
        )
        own = torch.arange(batch_size, device=device)
        return offsets + (offsets >= own).long()
    if similarity.shape != (batch_size, batch_size):
        raise ValueError(
            f"similarity must be ({batch_size}, {batch_size}), got {tuple(similarity.shape)}"
        )
    with torch.no_grad():
        scores = similarity.detach().float()
        if not bool(torch.isfinite(scores).all()):
            raise ValueError("similarity contains non-finite values; cannot sample negatives")
        own = torch.eye(batch_size, dtype=torch.bool, device=scores.device)
        probs = scores.masked_fill(own, float("-inf")).softmax(dim=1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def combine_losses(
    terms: dict[str, Tensor], weights: Mapping[str, float]
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of the loss terms, plus detached values for logging.

    Terms whose weight is missing or zero are left out of the sum but still reported, so a
    stage can log a loss it does not train on. Returns ``(total, logs)`` where ``logs``
    maps every term name and ``"loss"`` (the total) to a detached 0-dim tensor.
    """
    if "loss" in terms:
        raise ValueError('a loss term may not be named "loss": that name is the logged total')
    for name, value in terms.items():
        if value.dim() != 0:
            raise ValueError(f"loss term {name!r} must be 0-dim, got shape {tuple(value.shape)}")
    for name, weight in weights.items():
        if weight < 0:
            raise ValueError(f"loss weight for {name!r} must be non-negative, got {weight}")
    active = [name for name in terms if weights.get(name, 0.0) > 0]
    if not active:
        raise ValueError(
            f"no loss term has a positive weight: terms {sorted(terms)}, weights {dict(weights)}"
        )
    total = weights[active[0]] * terms[active[0]]
    for name in active[1:]:
        total = total + weights[name] * terms[name]
    logs = {name: value.detach() for name, value in terms.items()}
    logs["loss"] = total.detach()
    return total, logs
