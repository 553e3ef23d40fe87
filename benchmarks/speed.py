"""The speed table: flava_zoo's FLAVA against transformers' (and torchmultimodal's where installed).

Backbone forward, training step, inference throughput, peak memory, FLOPs per sample and
share of the matmul peak for each size and precision; the multimodal pretraining step
against transformers' ``FlavaForPreTraining``; data-loading samples/s per worker. All of it
is measured by :mod:`flava_zoo.bench.speed` in one run:

    python benchmarks/speed.py --out benchmarks/results/speed

writes ``speed.md`` and ``speed.json``; progress goes to stderr. ``--smoke`` is a seconds-long
run on flava-tiny (tests, dry runs). ``benchmarks/gpu.sh`` runs the CUDA table.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

import torch

from flava_zoo.bench.speed import SpeedSettings, log, run
from flava_zoo.bench.speed_report import write_report


def _list(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def settings_sizes(text: str) -> list[str]:
    """The sizes a smoke run keeps when ``--sizes`` is given (``''``: none, pretraining only)."""
    return _list(text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=None, help="default: flava-tiny,flava-small,flava-base ('' for none)")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--implementations", default="flava_zoo,transformers,torchmultimodal")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--text-length", type=int, default=77)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--reps", type=int, default=5, help="timed rounds per size")
    p.add_argument("--reps-base", type=int, default=None, help="rounds for flava-base and larger")
    p.add_argument("--cell-seconds", type=float, default=None, help="cut rounds to about this many seconds")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--peak-sizes", default="1024,2048,3072", help="square matmul sizes of the peak")
    p.add_argument("--pretrain-sizes", default="flava-tiny")
    p.add_argument("--pretrain-batch", type=int, default=64)
    p.add_argument("--pretrain-warmup", type=int, default=2)
    p.add_argument("--pretrain-reps", type=int, default=10)
    p.add_argument("--compile", default="", help="pretraining models to also time compiled")
    p.add_argument("--compile-backend", default="inductor", help="eager: a quick dry run of the path")
    p.add_argument("--nominal-peak-tflops", type=float, default=None, help="datasheet peak for MFU")
    p.add_argument("--data-batches", type=int, default=50, help="0: no data-loading rows")
    p.add_argument("--in-process", action="store_true", help="CPU memory in this process (less isolated)")
    p.add_argument("--smoke", action="store_true", help="seconds-long flava-tiny run")
    p.add_argument("--title", default="Speed")
    p.add_argument("--out", default="benchmarks/results/speed", help="path without extension")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Measure, write ``--out`` .json and .md, return the report."""
    args = parse_args(argv)
    before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    small = dict(sizes=["flava-tiny"] if args.sizes is None else settings_sizes(args.sizes), batch=2, reps=1, warmup=0, peak_sizes=[128], pretrain_batch=4,
                 pretrain_warmup=0, pretrain_reps=1, data_batches=1, data_train_size=16, wds_samples=8)
    settings = SpeedSettings(
        sizes=_list("flava-tiny,flava-small,flava-base" if args.sizes is None else args.sizes), precisions=_list(args.precisions), implementations=_list(args.implementations),
        device=args.device, batch=args.batch, text_length=args.text_length, warmup=args.warmup, reps=args.reps,
        reps_base=args.reps_base, cell_seconds=args.cell_seconds, isolate=not args.in_process,
        peak_sizes=[int(n) for n in _list(args.peak_sizes)], pretrain_sizes=_list(args.pretrain_sizes),
        pretrain_batch=args.pretrain_batch, pretrain_warmup=args.pretrain_warmup, pretrain_reps=args.pretrain_reps,
        compile=_list(args.compile), compile_backend=args.compile_backend,
        nominal_peak_tflops=args.nominal_peak_tflops, data=args.data_batches > 0,
        data_batches=max(args.data_batches, 1),
    )
    if args.smoke:
        settings = SpeedSettings(**{**settings.__dict__, **small, "pretrain_sizes": ["flava-tiny"]})
    command = shlex.join(["python", "benchmarks/speed.py", *(sys.argv[1:] if argv is None else argv)])

    def write(report: dict) -> tuple:
        report["title"] = args.title
        return write_report(report, args.out)

    try:
        report = run(settings, command, progress=write)
    finally:
        torch.set_num_threads(before)
    paths = write(report)
    log(f"wrote {paths[0]} and {paths[1]}")
    return report


if __name__ == "__main__":
    main()
