"""Tests for flava_zoo.losses against straightforward reference implementations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from flava_zoo.losses import (
    combine_losses,
    contrastive_logits,
    contrastive_loss,
    gather_with_grad,
    itm_loss,
    masked_prediction_loss,
    normalized_pixel_targets,
    patchify,
    pixel_regression_loss,
    sample_itm_negatives,
)


def _embeddings(batch: int = 6, dim: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(batch, dim, generator=gen, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(batch, dim, generator=gen, dtype=torch.float64), dim=-1)
    return image, text


def _reference_contrastive(image: torch.Tensor, text: torch.Tensor, scale: float) -> float:
    """InfoNCE by explicit loops and a hand-written log-softmax."""
    n = image.shape[0]
    sim = [[scale * float(image[i] @ text[j]) for j in range(n)] for i in range(n)]
    i2t = 0.0
    t2i = 0.0
    for i in range(n):
        row = sim[i]
        i2t -= row[i] - math.log(sum(math.exp(v) for v in row))
        col = [sim[j][i] for j in range(n)]
        t2i -= col[i] - math.log(sum(math.exp(v) for v in col))
    return (i2t / n + t2i / n) / 2


def test_gather_is_identity_without_process_group() -> None:
    x = torch.randn(3, 4)
    assert gather_with_grad(x) is x


def test_contrastive_loss_matches_reference() -> None:
    image, text = _embeddings()
    scale = torch.tensor(7.5, dtype=torch.float64)
    loss = contrastive_loss(image, text, scale)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(_reference_contrastive(image, text, 7.5), abs=1e-6)
    assert contrastive_loss(image, text, scale, gather=False).item() == pytest.approx(loss.item())


def test_contrastive_loss_float32_matches_reference() -> None:
    image, text = _embeddings()
    loss = contrastive_loss(image.float(), text.float(), torch.tensor(7.5))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(_reference_contrastive(image, text, 7.5), abs=1e-5)


def test_contrastive_loss_is_symmetric() -> None:
    image, text = _embeddings()
    scale = torch.tensor(3.0, dtype=torch.float64)
    assert torch.allclose(
        contrastive_loss(image, text, scale), contrastive_loss(text, image, scale)
    )


def test_contrastive_gradients_reach_scale_and_both_embeddings() -> None:
    image, text = _embeddings()
    image.requires_grad_(True)
    text.requires_grad_(True)
    log_scale = torch.tensor(math.log(1 / 0.07), dtype=torch.float64, requires_grad=True)
    contrastive_loss(image, text, log_scale.exp()).backward()
    for grad in (image.grad, text.grad, log_scale.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_aligned_embeddings_with_large_scale_give_zero_loss() -> None:
    emb = torch.eye(5)
    assert contrastive_loss(emb, emb.clone(), torch.tensor(100.0)).item() < 1e-6


def test_contrastive_logits_are_scaled_similarities() -> None:
    image, text = _embeddings()
    per_image, per_text = contrastive_logits(image, text, torch.tensor(2.0, dtype=torch.float64))
    assert torch.allclose(per_image, 2.0 * image @ text.t())
    assert torch.equal(per_text, per_image.t())


def test_contrastive_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="same shape"):
        contrastive_loss(torch.randn(4, 8), torch.randn(3, 8), torch.tensor(1.0))
    with pytest.raises(ValueError, match="single value"):
        contrastive_loss(torch.randn(4, 8), torch.randn(4, 8), torch.ones(2))


def test_masked_prediction_loss_matches_cross_entropy() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(7, 11, generator=gen)
    labels = torch.randint(0, 11, (7,), generator=gen)
    expected = -logits.log_softmax(-1)[torch.arange(7), labels].mean()
    assert torch.allclose(masked_prediction_loss(logits, labels), expected)


def test_masked_prediction_loss_accepts_bfloat16() -> None:
    logits = torch.randn(4, 9).bfloat16()
    loss = masked_prediction_loss(logits, torch.tensor([0, 1, 2, 3]))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


@pytest.mark.parametrize(
    ("fn", "shape"),
    [
        (lambda x: masked_prediction_loss(x, torch.zeros(0, dtype=torch.long)), (0, 11)),
        (lambda x: pixel_regression_loss(x, torch.zeros(0, 12)), (0, 12)),
        (lambda x: itm_loss(x, torch.zeros(0, dtype=torch.long)), (0, 2)),
    ],
)
def test_empty_masked_losses_are_zero_with_zero_gradient(fn, shape) -> None:
    weight = torch.randn(3, shape[1], requires_grad=True)
    logits = torch.zeros(0, 3) @ weight
    loss = fn(logits)
    assert loss.dim() == 0 and loss.item() == 0.0
    loss.backward()
    assert weight.grad is not None and torch.equal(weight.grad, torch.zeros_like(weight))


def test_masked_prediction_loss_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(M, V\)"):
        masked_prediction_loss(torch.randn(2, 3, 4), torch.zeros(2, dtype=torch.long))


def test_patchify_matches_conv_patch_embedding() -> None:
    p, c = 4, 3
    images = torch.randn(2, c, 8, 12, generator=torch.Generator().manual_seed(2))
    # One output channel per patch element, ordered (pixel row, pixel column, channel).
    kernel = torch.zeros(p * p * c, c, p, p)
    for i in range(p):
        for j in range(p):
            for k in range(c):
                kernel[(i * p + j) * c + k, k, i, j] = 1.0
    tokens = F.conv2d(images, kernel, stride=p).flatten(2).transpose(1, 2)
    patches = patchify(images, p)
    assert patches.shape == (2, 6, p * p * c)
    assert torch.equal(patches, tokens)


def test_patchify_matches_unfold_and_row_major_order() -> None:
    images = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    unfolded = F.unfold(images, kernel_size=2, stride=2)  # (B, C*p*p, N), channel-major
    expected = unfolded.transpose(1, 2).reshape(2, 6, 3, 2, 2).permute(0, 1, 3, 4, 2)
    assert torch.equal(patchify(images, 2), expected.reshape(2, 6, 12))
    # Patch 1 is row 0, column 1 (to the right of patch 0), patch 3 starts row 1.
    assert patchify(images, 2)[0, 1, 0] == images[0, 0, 0, 2]
    assert patchify(images, 2)[0, 3, 0] == images[0, 0, 2, 0]


def test_patchify_rejects_indivisible_sizes() -> None:
    with pytest.raises(ValueError, match="image size 10x12 is not divisible by patch size 4"):
        patchify(torch.zeros(1, 3, 10, 12), 4)


def test_normalized_pixel_targets_are_standardised_per_patch() -> None:
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 5 + 2
    targets = normalized_pixel_targets(images, 8)
    assert targets.shape == (2, 4, 192)
    assert torch.allclose(targets.mean(-1), torch.zeros(2, 4), atol=1e-5)
    assert torch.allclose(targets.var(-1), torch.ones(2, 4), atol=1e-4)


def test_pixel_regression_loss_is_mse() -> None:
    pred, target = torch.randn(5, 12), torch.randn(5, 12)
    assert torch.allclose(pixel_regression_loss(pred, target), ((pred - target) ** 2).mean())
    with pytest.raises(ValueError, match="same shape"):
        pixel_regression_loss(pred, target[:4])


def test_itm_loss_is_two_way_cross_entropy() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5]])
    labels = torch.tensor([0, 1])
    expected = -(logits.log_softmax(-1)[[0, 1], [0, 1]]).mean()
    assert torch.allclose(itm_loss(logits, labels), expected)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        itm_loss(torch.randn(2, 3), labels)


def test_uniform_negatives_avoid_own_index_and_cover_others() -> None:
    gen = torch.Generator().manual_seed(4)
    draws = torch.stack([sample_itm_negatives(5, generator=gen) for _ in range(400)])
    assert draws.dtype == torch.long and draws.shape == (400, 5)
    assert not (draws == torch.arange(5)).any()
    for i in range(5):
        assert set(draws[:, i].tolist()) == set(range(5)) - {i}


def test_hard_negatives_follow_similarity() -> None:
    sim = torch.zeros(4, 4)
    sim.fill_diagonal_(50.0)  # the positive must never be drawn, however similar
    sim[0, 2] = sim[1, 3] = sim[2, 0] = sim[3, 1] = 20.0
    gen = torch.Generator().manual_seed(5)
    draws = torch.stack([sample_itm_negatives(4, sim, generator=gen) for _ in range(200)])
    assert not (draws == torch.arange(4)).any()
    assert (draws == torch.tensor([2, 3, 0, 1])).float().mean() > 0.99


def test_negative_sampling_is_deterministic() -> None:
    sim = torch.randn(6, 6, generator=torch.Generator().manual_seed(6))
    for similarity in (None, sim):
        first = sample_itm_negatives(6, similarity, torch.Generator().manual_seed(7))
        second = sample_itm_negatives(6, similarity, torch.Generator().manual_seed(7))
        assert torch.equal(first, second)


def test_negative_sampling_errors() -> None:
    with pytest.raises(ValueError, match="at least 2 samples"):
        sample_itm_negatives(1)
    with pytest.raises(ValueError, match=r"must be \(3, 3\)"):
        sample_itm_negatives(3, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="non-finite"):
        sample_itm_negatives(2, torch.tensor([[0.0, float("nan")], [0.0, 0.0]]))


def test_combine_losses_weighted_sum_and_logs() -> None:
    a = torch.tensor(2.0, requires_grad=True)
    b = torch.tensor(3.0, requires_grad=True)
    c = torch.tensor(5.0, requires_grad=True)
    total, logs = combine_losses({"mlm": a, "mim": b, "itm": c}, {"mlm": 0.5, "mim": 2.0, "itm": 0})
    assert total.item() == pytest.approx(0.5 * 2 + 2 * 3)
    assert set(logs) == {"mlm", "mim", "itm", "loss"}
    assert logs["itm"].item() == 5.0 and logs["loss"].item() == total.item()
    assert all(not v.requires_grad for v in logs.values())
    total.backward()
    assert a.grad.item() == 0.5 and b.grad.item() == 2.0 and c.grad is None


def test_combine_losses_errors() -> None:
    terms = {"mlm": torch.tensor(1.0), "itm": torch.tensor(2.0)}
    with pytest.raises(
        ValueError, match=r"no loss term has a positive weight: terms \['itm', 'mlm'\]"
    ):
        combine_losses(terms, {"mlm": 0.0, "contrastive": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        combine_losses(terms, {"mlm": -1.0})
    with pytest.raises(ValueError, match="0-dim"):
        combine_losses({"mlm": torch.ones(2)}, {"mlm": 1.0})
    with pytest.raises(ValueError, match='named "loss"'):
        combine_losses({"loss": torch.tensor(1.0)}, {"loss": 1.0})
