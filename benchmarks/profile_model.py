"""Where the time of one training step goes: torch.profiler over our model (or the peer).

Uses the inputs and the step of :mod:`model_speed` (same batch, caption lengths, loss), so
its numbers explain that benchmark's table.

    python benchmarks/profile_model.py --size flava-base --precision fp32 --impl ours
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import model_speed  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="flava-base")
    p.add_argument("--precision", default="fp32", choices=model_speed.PRECISIONS)
    p.add_argument("--impl", default="ours", choices=("ours", "peer"))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--text-length", type=int, default=77)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--rows", type=int, default=30)
    p.add_argument("--group-by-shape", action="store_true")
    p.add_argument("--trace", default=None, help="write a Chrome trace here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, cfg = model_speed.build(args.impl, args.size)
    inputs = model_speed.make_inputs(cfg, args.batch, args.text_length)
    model_speed.train_step(args.impl, model, inputs, args.precision)  # warm-up
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.group_by_shape) as prof:
        model_speed.train_step(args.impl, model, inputs, args.precision)
    table = prof.key_averages(group_by_input_shape=args.group_by_shape).table(
        sort_by="self_cpu_time_total",
        row_limit=args.rows,
        max_name_column_width=60,
        max_shapes_column_width=80,
    )
    print(table)
    if args.trace:
        prof.export_chrome_trace(args.trace)


if __name__ == "__main__":
    main()
