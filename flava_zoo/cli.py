"""The ``flava-zoo`` command line.

``fit``, ``validate``, ``test`` and ``predict`` are Lightning's own CLI (LightningCLI in
subclass mode: a recipe names its module and data module by class path);
``quickstart`` runs the three pretraining stages on the shapes world and evaluates
retrieval; ``tour`` builds each named size. ``main(args)`` takes an argument list so
that tests can call it in-process.
"""

from __future__ import annotations

import argparse
import sys
import time


def tour(argv: list[str]) -> int:
    """Print every named size's parameters and encode a batch with flava-tiny.

    Every size is built (flava-tiny for real, the others on the meta device)."""
    import torch

    from . import create_model, list_models

    parser = argparse.ArgumentParser(prog="flava-zoo tour", description=tour.__doc__)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args(argv)
    print(f"{'model':<12} {'image':>10} {'text':>10} {'fusion':>10} {'total':>10}  (millions of parameters)")
    for name in list_models():
        with torch.device("meta"):
            model = create_model(name)
        parts = [
            sum(p.numel() for p in m.parameters()) / 1e6 if m is not None else 0.0
            for m in (model.image_encoder, model.text_encoder, model.fusion_encoder)
        ]
        print(f"{name:<12} {parts[0]:>10.2f} {parts[1]:>10.2f} {parts[2]:>10.2f} {model.num_parameters() / 1e6:>10.2f}")
    torch.manual_seed(0)
    model = create_model("flava-tiny").eval()
    cfg = model.config
    x = torch.randn(args.batch, 3, cfg.image.image_size, cfg.image.image_size)
    ids = torch.randint(5, cfg.text.vocab_size, (args.batch, 16))
    mask = torch.ones_like(ids)
    start = time.perf_counter()
    with torch.no_grad():
        out = model(pixel_values=x, input_ids=ids, attention_mask=mask)
    ms = (time.perf_counter() - start) * 1e3
    print(f"\nflava-tiny on a batch of {args.batch} ({ms:.0f} ms):")
    print(f"  image last_hidden_state {tuple(out.image.last_hidden_state.shape)}, embedding {tuple(out.image.embedding.shape)}")
    print(f"  text  last_hidden_state {tuple(out.text.last_hidden_state.shape)}, embedding {tuple(out.text.embedding.shape)}")
    print(f"  multimodal last_hidden_state {tuple(out.multimodal.last_hidden_state.shape)}")
    sim = out.image.embedding @ out.text.embedding.T
    print(f"  image-text cosine similarities (untrained): {sim.diagonal().tolist()}")
    return 0


def lightning(argv: list[str]) -> int:
    """Run LightningCLI (``fit``, ``validate``, ``test``, ``predict``) on ``argv``.

    Recipes add a ``ModelCheckpoint(save_last=True)`` so that ``--ckpt_path last`` resumes.
    ``validate``, ``test`` and ``predict`` with ``--ckpt_path`` rebuild the model from the
    checkpoint and fail when it names no file (:mod:`flava_zoo.recipe_cli`).
    """
    from .recipe_cli import run_lightning

    return run_lightning(argv)


def recipes(argv: list[str]) -> int:
    """List the shipped recipes (name, family and stage or task, what each does); fit --config NAME."""
    from .shipped import list_recipes

    parser = argparse.ArgumentParser(prog="flava-zoo recipes", description=recipes.__doc__)
    parser.add_argument("--paths", action="store_true", help="show each recipe's file too")
    args = parser.parse_args(argv)
    found = list_recipes()
    width = max(len(r.name) for r in found)
    kinds = [f"{r.family}: {r.kind}" if r.kind else r.family for r in found]
    kind_width = max(len(k) for k in kinds)
    for r, kind in zip(found, kinds):
        line = f"{r.name:<{width}}  {kind:<{kind_width}}  {r.description}"
        print(line + (f"  [{r.path}]" if args.paths else ""))
    return 0


def quickstart(argv: list[str]) -> int:
    """Pretrain flava-tiny-shapes in three stages on the shapes world and evaluate zero-shot retrieval."""
    from .training.quickstart import main as quickstart_main

    return quickstart_main(argv)


def zoo(argv: list[str]) -> int:
    """Model zoo: list, info, download, verify, forget, publish."""
    from .zoo.cli import main as zoo_main

    return zoo_main(argv)


def bench(argv: list[str]) -> int:
    """Leaderboards: run a suite of models x tasks, build the tables."""
    from .bench.cli import main as bench_main

    return bench_main(argv)


def glue_score(argv: list[str]) -> int:
    """The GLUE score (average over tasks) from a results file."""
    from .downstream.cli import glue_score_main

    return glue_score_main(argv)


def evaluate_predictions(argv: list[str]) -> int:
    """Score a predictions JSONL or an official submission file against annotations."""
    from .evaluation.cli import main as evaluate_main

    return evaluate_main(argv)


def embed(argv: list[str]) -> int:
    """Images and / or captions to normalised contrastive embeddings plus an index."""
    from .inference import embed_main

    return embed_main(argv)


def score(argv: list[str]) -> int:
    """Image-caption pairs to contrastive cosine and ITM probability."""
    from .inference import score_main

    return score_main(argv)


def filter_pairs(argv: list[str]) -> int:
    """Keep the image-text pairs a model scores best (manifests, or the shapes world's)."""
    from .filtering import main as filter_main

    return filter_main(argv)


def probe(argv: list[str]) -> int:
    """Probes of what a model learned, scored against ground truth; an HTML report."""
    from .probes.cli import main as probe_main

    return probe_main(argv)


COMMANDS = {
    "fit": lightning,
    "validate": lightning,
    "test": lightning,
    "predict": lightning,
    "recipes": recipes,
    "quickstart": quickstart,
    "tour": tour,
    "zoo": zoo,
    "bench": bench,
    "glue-score": glue_score,
    "evaluate-predictions": evaluate_predictions,
    "embed": embed,
    "score": score,
    "filter": filter_pairs,
    "probe": probe,
}


SUMMARIES = {
    "fit": "train a recipe's module (pretraining stage, fine-tuning); --ckpt_path last resumes",
    "validate": "validate a recipe's module, rebuilt from --ckpt_path when given",
    "test": "evaluate and append results records; --ckpt_path rebuilds what was trained",
    "predict": "predictions JSONL and the task's official submission files",
}
"""One line per Lightning command (the others' lines are their functions' docstrings)."""


def usage() -> str:
    """Top-level help: every command with one line, and where to read more."""
    from . import __version__

    lines = [f"flava-zoo {__version__}: FLAVA-style multimodal models", "", "usage: flava-zoo COMMAND [options]", ""]
    for name, fn in COMMANDS.items():
        summary = SUMMARIES.get(name) or (fn.__doc__ or "").strip().splitlines()[0]
        lines.append(f"  {name:<22}{summary}")
    lines += ["", "flava-zoo COMMAND --help shows a command's options; flava-zoo recipes lists the recipes."]
    return "\n".join(lines)


def main(args: list[str] | None = None) -> int:
    """Entry point of the ``flava-zoo`` console script."""
    from .reproducibility import reproducible_blas

    reproducible_blas()  # before any matrix product of this process (see flava_zoo/reproducibility.py)
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"flava-zoo {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"flava-zoo: unknown command {command!r}; choose from {sorted(COMMANDS)}", file=sys.stderr)
        return 2
    if COMMANDS[command] is lightning:
        return lightning(argv)
    return COMMANDS[command](rest)


if __name__ == "__main__":
    sys.exit(main())
