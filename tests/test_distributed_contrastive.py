"""The global contrastive loss over 2 gloo processes equals the single-process loss.

Each rank holds half of a batch. ``contrastive_loss`` gathers the other rank's embeddings
with gradients, and the backward of the gather sums over ranks the gradients every rank's
loss sends to a slice. So, with ``W`` ranks and ``L`` the single-process loss on the whole
batch:

- ``mean_r L_r == L`` (each ``L_r`` averages its own ``B`` rows over the same ``W*B`` columns);
- rank ``r``'s embedding gradient is ``d(sum_r' L_r')/dx_r = W * dL/dx_r``; DDP then averages
  parameter gradients over ranks, which divides by ``W`` again, giving exactly ``dL/dtheta``;
- ``logit_scale`` is replicated, not gathered, so rank ``r``'s gradient is ``dL_r/ds`` and the
  DDP average ``mean_r dL_r/ds`` equals ``dL/ds``.

On Linux the workers are forked (``torch.multiprocessing.start_processes``) rather than
spawned: a spawned worker re-imports torch, which takes most of the test's time on 2 CPU
cores. Each worker limits itself to one intra-op thread before any torch work.
"""

from __future__ import annotations

import datetime
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from flava_zoo.losses import contrastive_loss, gather_with_grad

WORLD_SIZE = 2
LOCAL_BATCH = 3
DIM = 5
SCALE = 4.0


def _full_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    shape = (WORLD_SIZE * LOCAL_BATCH, DIM)
    image = F.normalize(torch.randn(shape, generator=gen, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(shape, generator=gen, dtype=torch.float64), dim=-1)
    return image, text


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=30),
    )
    try:
        image, text = _full_batch()
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        image = image[rows].clone().requires_grad_(True)
        text = text[rows].clone().requires_grad_(True)
        scale = torch.tensor(SCALE, dtype=torch.float64, requires_grad=True)
        gathered_shape = tuple(gather_with_grad(image).shape)
        loss = contrastive_loss(image, text, scale)
        loss.backward()
        torch.save(
            {
                "loss": loss.detach(),
                "image_grad": image.grad,
                "text_grad": text.grad,
                "scale_grad": scale.grad,
                "gathered_shape": gathered_shape,
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def _run_workers(tmp_path: Path, timeout_s: float = 60.0) -> list[dict]:
    context = mp.start_processes(
        _worker,
        args=(str(tmp_path / "init"), str(tmp_path)),
        nprocs=WORLD_SIZE,
        join=False,
        start_method="fork" if sys.platform.startswith("linux") else "spawn",
    )
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(timeout=0.5):
            if time.monotonic() > deadline:
                raise TimeoutError(f"distributed workers did not finish in {timeout_s} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-12) -> None:
    """Float64 closeness (``torch.testing.assert_close`` would import DTensor: seconds here)."""
    assert actual.shape == expected.shape
    assert torch.allclose(actual, expected, rtol=0, atol=atol), (actual - expected).abs().max()


def test_gathered_contrastive_loss_matches_single_process(tmp_path: Path) -> None:
    results = _run_workers(tmp_path)

    image, text = _full_batch()
    image.requires_grad_(True)
    text.requires_grad_(True)
    scale = torch.tensor(SCALE, dtype=torch.float64, requires_grad=True)
    loss = contrastive_loss(image, text, scale)
    loss.backward()

    assert all(r["gathered_shape"] == (WORLD_SIZE * LOCAL_BATCH, DIM) for r in results)
    rank_losses = torch.stack([r["loss"] for r in results])
    assert not torch.allclose(rank_losses[0], rank_losses[1])  # the halves really differ
    _assert_close(rank_losses.mean(), loss.detach())

    for rank, result in enumerate(results):
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        # Rank-local activation gradient = W * single-process gradient; DDP's 1/W average
        # of the parameter gradients built from it restores the single-process value.
        _assert_close(result["image_grad"] / WORLD_SIZE, image.grad[rows])
        _assert_close(result["text_grad"] / WORLD_SIZE, text.grad[rows])

    scale_grads = torch.stack([r["scale_grad"] for r in results])
    _assert_close(scale_grads.mean(), scale.grad)
