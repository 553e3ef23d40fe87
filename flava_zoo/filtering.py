"""``flava-zoo filter``: keep the image-text pairs a model scores best (LAION-style filtering).

Each pair is scored by the cosine of the model's normalised contrastive embeddings (CLIP
score filtering, as LAION-400M kept pairs above a CLIP similarity); the best ``keep`` share
is kept (``round(keep * n)`` pairs, ties kept in file order). Two kinds of input:

* ``--manifest FILE`` (JSONL, CSV or TSV, read as :class:`~flava_zoo.data.sources.PairManifest`
  reads it; each row scored with its first caption): ``--out`` is a manifest of the same
  format holding the kept rows, unchanged and in file order, which every data module that
  reads manifests reads. Rows whose bytes are not UTF-8 are dropped and counted; a row that
  is not valid JSON, lacks a field or a caption, or names an image that cannot be read stops
  the filter with an error naming the file and line (a filter that silently scored fewer
  rows would keep a different share of the manifest than asked).
* ``--shapes``: the shapes world's training pairs with ``--caption-noise`` of them made weak
  (:class:`~flava_zoo.data.noise.NoisyCaptions`): ``--out`` is a JSON file of the kept
  scene indices, the pretraining data module's ``keep`` argument. It reports how many of the
  noisy pairs the filter removed.

A scores file (``OUT.scores.jsonl``: one ``{"row", "score", "kept"}`` a pair) is written
beside the output. Outputs are written to a temporary file and renamed into place.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["FilterResult", "filter_manifest", "filter_shapes", "keep_best", "main", "pair_scores"]


class FilterError(ValueError):
    """An input or setting ``flava-zoo filter`` cannot work with (exit status 1)."""


@dataclass
class FilterResult:
    """What a filter kept: ``kept`` row indices (sorted), every row's ``scores``, the
    lowest kept score (``threshold``) and the output path; for the shapes world, how many of
    the ``noisy`` rows were removed."""

    kept: list[int]
    scores: np.ndarray
    threshold: float
    out: Path
    noisy: int | None = None
    noisy_removed: int | None = None
    dropped_bad: int = 0


def keep_best(scores: Sequence[float], keep: float) -> list[int]:
    """The indices of the ``round(keep * n)`` highest ``scores`` (at least one), sorted;
    among equal scores the earlier rows are kept."""
    if not 0.0 < keep <= 1.0:
        raise FilterError(f"--keep must be in (0, 1], got {keep}")
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise FilterError("there are no pairs to filter")
    count = max(1, int(math.floor(keep * len(values) + 0.5)))
    order = np.lexsort((np.arange(len(values)), -values))  # score descending, then row
    return sorted(int(i) for i in order[:count])


@torch.no_grad()
def pair_scores(model: Any, images: Sequence[Any], texts: Sequence[str], batch_size: int = 64, quiet: bool = True) -> np.ndarray:
    """Contrastive cosine of each (image, text) pair: ``model`` is an
    :class:`~flava_zoo.inference.InferenceModel`; ``images`` are PIL images or zero-argument
    callables returning one (so that images load a batch at a time)."""
    from .inference import _progress

    if len(images) != len(texts):
        raise FilterError(f"{len(images)} images but {len(texts)} captions")
    out = []
    bar = _progress(len(images), "scoring pairs", quiet)
    for lo in range(0, len(images), batch_size):
        ims = [im() if callable(im) else im for im in images[lo : lo + batch_size]]
        u = model.embed_images(ims)
        v = model.embed_texts(list(texts[lo : lo + batch_size]))
        out.append((u * v).sum(-1).numpy())
        bar.update(len(ims))
    bar.close()
    return np.concatenate(out).astype(np.float64)


def _atomic_text(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_scores(out: Path, scores: np.ndarray, kept: list[int], rows: Sequence[Any] | None = None) -> None:
    keep = set(kept)

    def write(handle: Any) -> None:
        for i, score in enumerate(scores):
            handle.write(json.dumps({"row": rows[i] if rows is not None else i, "score": float(score), "kept": i in keep}) + "\n")

    _atomic_text(out.with_name(out.name + ".scores.jsonl"), write)


def filter_manifest(model: Any, manifest: str | Path, keep: float, out: str | Path, image_root: str | Path | None = None,
                    batch_size: int = 64, quiet: bool = True, **reader: Any) -> FilterResult:
    """Score every row of ``manifest`` with ``model`` and write the kept rows to ``out`` in
    the manifest's own format (see the module doc); ``reader`` options go to the manifest
    reader (``caption_key``, ``image_key``, ...)."""
    from PIL import Image

    from .data.sources import PairManifest

    manifest, out = Path(manifest), Path(out)
    if out.suffix.lower() != manifest.suffix.lower():
        raise FilterError(f"--out {out} must have the manifest's extension {manifest.suffix}")
    if out.resolve() == manifest.resolve():
        raise FilterError(f"--out {out} is the input manifest: write the kept rows elsewhere")
    table = PairManifest(manifest, image_root=image_root, captions="first", **reader)
    rows = [i for i in range(len(table._images)) if i not in table._bad]

    def loader(path: Path, line: int) -> Any:
        def load() -> Any:
            try:
                with Image.open(path) as im:
                    return im.convert("RGB")
            except (OSError, ValueError) as e:
                raise FilterError(f"{manifest}:{line}: image {path} cannot be read: {e}") from None

        return load

    images = [loader(table.image_root / table._images[i], table._lines[i]) for i in rows]
    texts = [table._captions[i][0] for i in rows]
    for i, text in zip(rows, texts):
        if not text:
            raise FilterError(f"{manifest}:{table._lines[i]}: the row has no caption to score")
    scores = pair_scores(model, images, texts, batch_size, quiet)
    kept_positions = keep_best(scores, keep)
    kept_lines = {table._lines[rows[p]] for p in kept_positions}
    _copy_rows(manifest, out, kept_lines)
    _write_scores(out, scores, kept_positions, [f"{manifest.name}:{table._lines[i]}" for i in rows])
    return FilterResult(
        kept=kept_positions, scores=scores, threshold=float(scores[kept_positions].min()), out=out,
        dropped_bad=len(table._bad),
    )


def _copy_rows(manifest: Path, out: Path, lines: set[int]) -> None:
    """Write the rows of ``manifest`` that start on ``lines`` to ``out``, unchanged (JSONL:
    the lines as they are; CSV / TSV: the header, then the kept rows in the same dialect)."""
    suffix = manifest.suffix.lower()
    if suffix == ".jsonl":
        def write(handle: Any) -> None:
            with manifest.open(encoding="utf-8-sig", errors="surrogateescape") as src:
                for number, raw in enumerate(src, 1):
                    if number in lines:
                        handle.write(raw if raw.endswith("\n") else raw + "\n")
    else:
        delimiter = "\t" if suffix == ".tsv" else ","
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL

        def write(handle: Any) -> None:
            with manifest.open(encoding="utf-8-sig", newline="") as src:
                reader = csv.reader(src, delimiter=delimiter, quoting=quoting)
                writer = csv.writer(handle, delimiter=delimiter, quoting=quoting, lineterminator="\n",
                                    escapechar=None if quoting != csv.QUOTE_NONE else "\\")
                writer.writerow(next(reader))
                end = reader.line_num
                for row in reader:
                    line, end = end + 1, reader.line_num
                    if line in lines:
                        writer.writerow(row)

    _atomic_text(out, write)


def filter_shapes(model: Any, keep: float, out: str | Path, caption_noise: float = 0.0, train_size: int = 20_000,
                  world_seed: int = 0, noise_seed: int = 0, batch_size: int = 64, quiet: bool = True) -> FilterResult:
    """Score the shapes world's ``train_size`` training pairs (primary captions, ``caption_noise``
    of them weak: :class:`~flava_zoo.data.noise.NoisyCaptions`) and write the kept scene
    indices to the JSON file ``out`` (``{"indices": [...], ...}``: the pretraining data
    module's ``keep``)."""
    from .data.noise import NoisyCaptions
    from .data.shapes import ShapesPairs, ShapesWorld

    out = Path(out)
    world = ShapesWorld(seed=world_seed, image_size=model.model.config.image.image_size, sizes={"train": train_size})
    pairs = NoisyCaptions(ShapesPairs(world, "train"), caption_noise, noise_seed, text_of=lambda j: world.caption("train", j))
    images = [(lambda j=j: world.image("train", j)) for j in range(len(pairs))]
    texts = [pairs.text(j) for j in range(len(pairs))]
    scores = pair_scores(model, images, texts, batch_size, quiet)
    kept = keep_best(scores, keep)
    noisy = set(pairs.noisy_indices)
    removed = len(noisy - set(kept))
    summary = {
        "indices": kept,
        "keep": keep,
        "train_size": train_size,
        "world_seed": world_seed,
        "caption_noise": caption_noise,
        "noise_seed": noise_seed,
        "noisy": len(noisy),
        "noisy_removed": removed,
        "threshold": float(scores[kept].min()),
    }
    _atomic_text(out, lambda handle: json.dump(summary, handle))
    _write_scores(out, scores, kept)
    return FilterResult(kept=kept, scores=scores, threshold=summary["threshold"], out=out, noisy=len(noisy), noisy_removed=removed)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``flava-zoo filter``."""
    parser = argparse.ArgumentParser(prog="flava-zoo filter", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="registered name, zoo tag, export folder or .ckpt")
    parser.add_argument("--tokenizer", default=None, help="folder with vocab.txt (default: the model's own)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", help="a JSONL / CSV / TSV pair manifest")
    source.add_argument("--shapes", action="store_true", help="the shapes world's training pairs")
    parser.add_argument("--keep", type=float, required=True, help="share of the pairs to keep, in (0, 1]")
    parser.add_argument("--out", required=True, help="kept manifest (same format), or the kept indices' JSON for --shapes")
    parser.add_argument("--image-root", dest="image_root", default=None, help="folder the manifest's image paths are relative to")
    parser.add_argument("--caption-key", dest="caption_key", default=None)
    parser.add_argument("--image-key", dest="image_key", default="image")
    parser.add_argument("--caption-noise", dest="caption_noise", type=float, default=0.0, help="--shapes: share of weak pairs")
    parser.add_argument("--train-size", dest="train_size", type=int, default=20_000, help="--shapes: training scenes")
    parser.add_argument("--world-seed", dest="world_seed", type=int, default=0)
    parser.add_argument("--noise-seed", dest="noise_seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=64)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    from .inference import InferenceError, load_inference_model

    try:
        model = load_inference_model(args.model, device=args.device, tokenizer=args.tokenizer)
        if args.shapes:
            result = filter_shapes(model, args.keep, args.out, args.caption_noise, args.train_size, args.world_seed,
                                   args.noise_seed, args.batch_size, args.quiet)
        else:
            result = filter_manifest(model, args.manifest, args.keep, args.out, args.image_root, args.batch_size,
                                     args.quiet, caption_key=args.caption_key, image_key=args.image_key)
    except (FilterError, InferenceError, FileNotFoundError, ValueError) as e:
        print(f"flava-zoo filter: {e}", file=sys.stderr)
        return 1
    n = len(result.scores)
    print(f"kept {len(result.kept)} of {n} pairs (score >= {result.threshold:.4f}) -> {result.out}")
    if result.noisy is not None:
        print(f"weak pairs: {result.noisy}, of which the filter removed {result.noisy_removed}")
    if result.dropped_bad:
        print(f"{result.dropped_bad} rows could not be read and were dropped", file=sys.stderr)
    return 0
