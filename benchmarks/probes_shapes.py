"""Every probe on the quickstart model and on the same architecture at random init.

    flava-zoo quickstart --output quickstart_out
    python benchmarks/probes_shapes.py --quickstart quickstart_out \
        --vqa runs/probes/vqa_quickstart/checkpoints/last.ckpt --memes runs/probes/memes_quickstart/checkpoints/last.ckpt \
        --random-vqa runs/probes/vqa_random/checkpoints/last.ckpt --random-memes runs/probes/memes_random/checkpoints/last.ckpt

(the classifiers: ``flava-zoo fit --config recipes/finetune/shapes_{vqa,memes}.yaml
--model.init_args.model {quickstart_out | flava-tiny-shapes} --trainer.default_root_dir
runs/probes/{task}_{quickstart|random}``). Writes ``--out`` (``benchmarks/results/probes_shapes``):
``results.jsonl``, the figures, ``probes_shapes.md`` and the report ``probes_shapes.html``;
resumes (a probe already recorded for a model is not run again). The random-init model is
flava-tiny-shapes with seed 0, the quickstart's tokenizer and a fresh ITM head, written as
an export folder (``--random-export``). Only ``results.jsonl``, the Markdown and the HTML
(which embeds every figure) are committed; the PNGs and ``figures.jsonl`` stay local.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from flava_zoo.bench.probe_table import ProbeModel, run_all, write_table
from flava_zoo.reproducibility import reproducible_blas


def random_init_export(folder: Path, like: Path, arch: str = "flava-tiny-shapes", seed: int = 0) -> Path:
    """``arch`` at random init (``seed``) with ``like``'s tokenizer and a fresh ITM head, as an
    export folder (so every probe, the ITM ones too, runs on it)."""
    import torch

    from flava_zoo import create_model, get_tokenizer
    from flava_zoo.checkpoint import save_pretrained
    from flava_zoo.models.heads import ITMHead

    if (folder / "config.json").is_file():
        return folder
    tokenizer = get_tokenizer(like)
    torch.manual_seed(seed)
    model = create_model(arch, text__vocab_size=create_model(like).config.text.vocab_size)
    head = ITMHead(model.config.multimodal.hidden_size)
    return save_pretrained(model, folder, tokenizer=tokenizer, heads={"itm_head": head},
                           metadata={"random_init": arch, "seed": seed})


def _text_only(quickstart: Path) -> dict[str, dict[str, str]]:
    """The grounding probe's text-only tower: the quickstart's stage-2 export, when present."""
    stage = quickstart.with_name(quickstart.name + ".run") / "stages" / "text"
    if (stage / "config.json").is_file():
        return {"grounding": {"text_only": str(stage), "text_only_label": "quickstart_text_stage"}}
    return {}


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run the probes, write the table and the report."""
    reproducible_blas()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quickstart", default="quickstart_out", help="the quickstart's export")
    parser.add_argument("--vqa", help="VQA classifier fine-tuned from the quickstart model")
    parser.add_argument("--memes", help="memes-like classifier fine-tuned from the quickstart model")
    parser.add_argument("--random-vqa", dest="random_vqa", help="VQA classifier fine-tuned from random init")
    parser.add_argument("--random-memes", dest="random_memes", help="memes-like classifier fine-tuned from random init")
    parser.add_argument("--probes", nargs="+", default=None, help="default: every probe")
    parser.add_argument("--made-with", dest="made_with", action="append", default=[],
                        help="a command that made the inputs (the quickstart, the fits), listed first in the table")
    parser.add_argument("--note", dest="notes", action="append", default=[], help="a paragraph for the table")
    parser.add_argument("--out", default="benchmarks/results/probes_shapes")
    parser.add_argument("--random-export", dest="random_export", default="runs/probes/random_init",
                        help="where the random-init model is written (once)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    quickstart = Path(args.quickstart)
    if not (quickstart / "config.json").is_file():
        print(f"{quickstart} is not an export: run flava-zoo quickstart --output {quickstart} first", file=sys.stderr)
        return 1
    random_dir = random_init_export(Path(args.random_export), quickstart)
    models = [
        ProbeModel("quickstart", str(quickstart), classifiers={k: v for k, v in (("vqa", args.vqa), ("memes", args.memes)) if v},
                   options=_text_only(quickstart)),
        ProbeModel("random_init", str(random_dir),
                   classifiers={k: v for k, v in (("vqa", args.random_vqa), ("memes", args.random_memes)) if v}),
    ]
    results = run_all(models, out, args.probes)
    given = argv if argv is not None else sys.argv[1:]
    shown, skip = [], False
    for a in given:  # the table lists --made-with and --note apart, not inside the command
        if skip:
            skip = False
        elif a in ("--made-with", "--note"):
            skip = True
        elif not a.startswith(("--made-with=", "--note=")):
            shown.append(a)
    command = "python benchmarks/probes_shapes.py " + " ".join(shlex.quote(a) for a in shown)
    table = write_table(results, out.parent / f"{out.name}.md", ["quickstart", "random_init", "quickstart_text_stage"],
                        [*args.made_with, command], args.notes)
    from flava_zoo.probes.report import build_report

    report = build_report([out], out.parent / f"{out.name}.html")
    print(f"{table}\n{report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
