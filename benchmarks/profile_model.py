"""Where the time of one training step goes: torch.profiler over one implementation's backbone.

Uses the inputs and the step of :mod:`flava_zoo.bench.speed` (same batch, caption lengths,
loss), so its numbers explain the speed table's rows.

    python benchmarks/profile_model.py --size flava-base --precision fp32 --impl flava_zoo
"""

from __future__ import annotations

import argparse
import os

import torch
from torch.profiler import ProfilerActivity, profile

import flava_zoo
from flava_zoo.bench import speed


def main(argv: list[str] | None = None) -> None:
    """Profile one forward + backward after a warm-up one; print the table of top ops."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="flava-base")
    p.add_argument("--precision", default="fp32", choices=speed.PRECISIONS)
    p.add_argument("--impl", default="flava_zoo", choices=speed.IMPLEMENTATIONS)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--text-length", type=int, default=77)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--rows", type=int, default=30)
    p.add_argument("--group-by-shape", action="store_true")
    p.add_argument("--trace", default=None, help="write a Chrome trace here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = speed.build_backbone(args.impl, args.size)
    x = speed.make_inputs(flava_zoo.get_config(args.size), args.batch, args.text_length)

    def step() -> None:
        speed.forward_backward(lambda m, v: speed.backbone_loss(args.impl, m, v), model, x, "cpu", args.precision)

    step()  # warm-up
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.group_by_shape) as prof:
        step()
    print(prof.key_averages(group_by_input_shape=args.group_by_shape).table(
        sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60, max_shapes_column_width=80))
    if args.trace:
        prof.export_chrome_trace(args.trace)


if __name__ == "__main__":
    main()
