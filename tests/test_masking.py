"""MLM and block maskers: statistics, invariants, determinism and RNG independence."""

from __future__ import annotations

import pickle
from collections import deque
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader

from flava_zoo.masking import IGNORE_INDEX, BlockMasker, MLMMasker

VOCAB = 1000
PAD, UNK, CLS, SEP, MASK = 0, 100, 101, 102, 103
SPECIAL = {PAD, UNK, CLS, SEP, MASK}


def _batch(rows: int = 512, length: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] tokens [SEP] [PAD]..., with random lengths and some [UNK] inside the text."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(104, VOCAB, (rows, length), generator=generator)
    ids[torch.rand(rows, length, generator=generator) < 0.02] = UNK
    lengths = torch.randint(3, length + 1, (rows,), generator=generator)
    positions = torch.arange(length)
    attention = (positions[None, :] < lengths[:, None]).long()
    ids[:, 0] = CLS
    ids[torch.arange(rows), lengths - 1] = SEP
    ids[attention == 0] = PAD
    return ids, attention


def _masker(**kwargs) -> MLMMasker:
    return MLMMasker(VOCAB, MASK, SPECIAL - {PAD}, pad_token_id=PAD, **kwargs)


def test_mlm_statistics_and_labels():
    ids, attention = _batch()
    original = ids.clone()
    masked, labels = _masker()(ids, attention)
    assert torch.equal(ids, original), "inputs must not be modified"
    assert masked.shape == labels.shape == ids.shape and labels.dtype == ids.dtype

    maskable = ~torch.isin(ids, torch.tensor(sorted(SPECIAL))) & attention.bool()
    selected = labels != IGNORE_INDEX
    assert not (selected & ~maskable).any(), "special tokens and padding are never selected"
    assert torch.equal(masked[~selected], ids[~selected])
    assert torch.equal(labels[selected], ids[selected])
    rate = selected.sum() / maskable.sum()
    assert abs(rate.item() - 0.15) < 0.01

    became_mask = (masked == MASK) & selected
    became_random = (masked != ids) & (masked != MASK) & selected
    kept = (masked == ids) & selected
    total = selected.sum().item()
    assert abs(became_mask.sum().item() / total - 0.8) < 0.03
    assert abs(became_random.sum().item() / total - 0.1) < 0.02
    assert abs(kept.sum().item() / total - 0.1) < 0.02
    assert not torch.isin(masked[became_random], torch.tensor(sorted(SPECIAL))).any()


def test_random_replacements_avoid_every_special_token():
    ids, attention = _batch(rows=256)
    masker = _masker(probability=0.5, mask_fraction=0.0, random_fraction=1.0)
    masked, labels = masker(ids, attention)
    replaced = masked[labels != IGNORE_INDEX]
    assert not torch.isin(replaced, torch.tensor(sorted(SPECIAL))).any()
    assert replaced.min() >= 0 and replaced.max() < VOCAB
    assert len(replaced.unique()) > 500  # drawn across the whole non-special vocabulary


def test_every_row_with_a_maskable_token_gets_one():
    ids = torch.tensor(
        [
            [CLS, 500, SEP, PAD, PAD],
            [CLS, SEP, PAD, PAD, PAD],  # nothing to mask
            [CLS, UNK, 600, 601, SEP],
            [CLS, 700, 701, 702, SEP],
        ]
    ).repeat(50, 1)
    attention = (ids != PAD).long()
    attention[3::4, 3:] = 0  # row 4's last tokens are hidden by the attention mask
    masked, labels = _masker(probability=0.01)(ids, attention)
    per_row = (labels != IGNORE_INDEX).sum(dim=1).view(50, 4)
    assert (per_row[:, 0] == 1).all() and (labels[0::4, 1] == 500).all()
    assert (per_row[:, 1] == 0).all() and torch.equal(masked[1::4], ids[1::4])
    assert (per_row[:, 2] == 1).all() and (labels[2::4, 1] == IGNORE_INDEX).all()
    assert (per_row[:, 3] == 1).all() and (labels[3::4, 3:] == IGNORE_INDEX).all()
    assert set(labels[2::4, 2:4].max(dim=1).values.tolist()) == {600, 601}


def test_attention_mask_is_optional():
    ids, attention = _batch(rows=64)
    with_mask = _masker()(ids, attention)
    without = _masker()(ids)
    assert all(torch.equal(a, b) for a, b in zip(with_mask, without))  # pads are special anyway


def test_mlm_is_deterministic_and_ignores_global_rng():
    ids, attention = _batch(rows=128)
    torch.manual_seed(0)
    first = _masker(seed=7)(ids, attention)
    torch.manual_seed(12345)
    state = torch.get_rng_state()
    second = _masker(seed=7)(ids, attention)
    assert torch.equal(state, torch.get_rng_state()), "the global RNG must not be consumed"
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    other = _masker(seed=8)(ids, attention)
    assert not torch.equal(first[1], other[1])
    masker = _masker(seed=7)
    masker(ids, attention)
    assert not torch.equal(masker(ids, attention)[1], first[1]), "successive calls differ"


def test_mlm_survives_pickling_mid_stream():
    ids, attention = _batch(rows=32)
    masker = _masker(seed=3)
    masker(ids, attention)
    clone = pickle.loads(pickle.dumps(masker))
    assert torch.equal(masker(ids, attention)[1], clone(ids, attention)[1])


def test_int32_input_and_from_tokenizer():
    duck = SimpleNamespace(
        vocab_size=VOCAB, mask_token_id=MASK, special_token_ids=SPECIAL, pad_token_id=PAD
    )
    masker = MLMMasker.from_tokenizer(duck, probability=0.3, seed=1)
    assert masker.probability == 0.3 and masker.special_token_ids == SPECIAL
    ids, attention = _batch(rows=16)
    masked, labels = masker(ids.int(), attention)
    assert masked.dtype == torch.int32 and (labels != IGNORE_INDEX).any()
    with pytest.raises(TypeError, match="has no attribute 'mask_token_id'"):
        MLMMasker.from_tokenizer(SimpleNamespace(vocab_size=10))


def test_from_flava_tokenizer():
    from flava_zoo.tokenizer import FlavaTokenizer

    tokenizer = FlavaTokenizer.train(["a red cat", "a blue dog", "the green bird"] * 5, 64)
    masker = MLMMasker.from_tokenizer(tokenizer, probability=0.5)
    batch = tokenizer(["a red dog", "the blue cat sat"])
    masked, labels = masker(batch["input_ids"], batch["attention_mask"])
    assert (labels != IGNORE_INDEX).sum(dim=1).min() >= 1
    assert not torch.isin(
        batch["input_ids"][labels != IGNORE_INDEX],
        torch.tensor(sorted(tokenizer.special_token_ids)),
    ).any()


def test_mlm_errors():
    with pytest.raises(ValueError, match=r"probability must be in \(0, 1\], got 0"):
        _masker(probability=0)
    with pytest.raises(ValueError, match="sum to at most 1, got 0.8 and 0.3"):
        _masker(random_fraction=0.3)
    with pytest.raises(ValueError, match="mask_token_id 5000 is outside the vocabulary"):
        MLMMasker(VOCAB, 5000, SPECIAL)
    with pytest.raises(ValueError, match=r"special_token_ids \[1000\] are outside"):
        MLMMasker(VOCAB, MASK, {1000})
    with pytest.raises(ValueError, match=r"input_ids must be \(batch, length\), got shape \(5,\)"):
        _masker()(torch.arange(5))
    with pytest.raises(ValueError, match="attention_mask shape"):
        _masker()(torch.ones(2, 5, dtype=torch.long), torch.ones(2, 4))
    with pytest.raises(TypeError, match="integer tensor, got torch.float32"):
        _masker()(torch.ones(2, 5))


class _RowDataset(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([CLS] + list(range(200, 262)) + [SEP])


class _MaskingCollate:
    def __init__(self, masker: MLMMasker) -> None:
        self.masker = masker

    def __call__(self, rows: list[torch.Tensor]) -> torch.Tensor:
        return self.masker(torch.stack(rows))[1]


def test_dataloader_workers_draw_different_masks():
    def run() -> list[torch.Tensor]:
        loader = DataLoader(
            _RowDataset(), batch_size=4, num_workers=2, collate_fn=_MaskingCollate(_masker())
        )
        return list(loader)

    first, second = run(), run()
    assert len(first) == 2 and not torch.equal(first[0], first[1])
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def _components(mask: torch.Tensor) -> list[int]:
    """Sizes of the 4-connected components of a 2-D boolean mask."""
    grid = mask.tolist()
    height, width = len(grid), len(grid[0])
    seen: set[tuple[int, int]] = set()
    sizes = []
    for start in ((r, c) for r in range(height) for c in range(width) if grid[r][c]):
        if start in seen:
            continue
        seen.add(start)
        queue, size = deque([start]), 0
        while queue:
            row, col = queue.popleft()
            size += 1
            for r, c in ((row + 1, col), (row - 1, col), (row, col + 1), (row, col - 1)):
                if 0 <= r < height and 0 <= c < width and grid[r][c] and (r, c) not in seen:
                    seen.add((r, c))
                    queue.append((r, c))
        sizes.append(size)
    return sizes


def test_block_masker_ratio_and_blocks_on_14x14():
    masker = BlockMasker(14, mask_ratio=0.4, seed=0)
    assert masker.num_masking_patches == 78
    masks = masker(500)
    assert masks.shape == (500, 196) and masks.dtype == torch.bool
    counts = masks.sum(dim=1)
    assert counts.max() <= 78 and counts.min() >= 16
    assert abs(counts.float().mean().item() / 196 - 0.4) < 0.04
    assert _components(torch.eye(3, dtype=torch.bool)) == [1, 1, 1]
    for mask in masks[:200]:
        assert min(_components(mask.view(14, 14))) >= 16


def test_block_masker_is_deterministic_and_ignores_global_rng():
    torch.manual_seed(0)
    first = BlockMasker(14, seed=5)(16)
    torch.manual_seed(99)
    state = torch.get_rng_state()
    second = BlockMasker(14, seed=5)(16)
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(first, second)
    assert not torch.equal(first, BlockMasker(14, seed=6)(16))
    assert len({tuple(row.nonzero().flatten().tolist()) for row in first}) > 1


@pytest.mark.parametrize("grid", [8, (6, 10), (10, 6), (7, 12)])
def test_block_masker_small_and_rectangular_grids(grid):
    masker = BlockMasker(grid, seed=1)
    height, width = (grid, grid) if isinstance(grid, int) else grid
    assert masker.sample().shape == (height, width)
    masks = masker(200)
    assert masks.shape == (200, height * width)
    ratio = masks.float().mean().item()
    assert 0.3 < ratio <= 0.41
    for mask in masks[:50]:
        assert min(_components(mask.view(height, width))) >= masker.min_block_patches == 16


def test_tiny_grid_clamps_blocks():
    masker = BlockMasker(4, mask_ratio=0.4)
    assert (masker.num_masking_patches, masker.min_block_patches) == (6, 6)
    for _ in range(20):
        mask = masker.sample()
        rows, cols = mask.nonzero().unbind(1)
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert mask.sum() == 6 == box, "one solid 6-patch rectangle"
    awkward = BlockMasker(4, mask_ratio=0.45)  # 7 patches: no rectangle of 7 fits a 4x4 grid
    assert all(awkward.sample().sum() >= 7 for _ in range(20)), "never an empty mask"


def test_block_masker_errors():
    for ratio in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=rf"mask_ratio must be in \(0, 1\), got {ratio}"):
            BlockMasker(14, mask_ratio=ratio)
    with pytest.raises(ValueError, match="grid_size must be positive"):
        BlockMasker((0, 4))
    with pytest.raises(ValueError, match="aspect ratios must satisfy"):
        BlockMasker(14, min_aspect=2.0)
    with pytest.raises(
        ValueError, match="max_block_patches 8 is smaller than min_block_patches 16"
    ):
        BlockMasker(14, max_block_patches=8)
    assert BlockMasker(14)(0).shape == (0, 196)
