"""Inference from the command line: ``flava-zoo embed`` and ``flava-zoo score``.

``embed`` turns images (a folder, or the images of a pair manifest) and / or captions (a text
file, one caption a line, or the captions of a pair manifest) into the model's normalised
contrastive embeddings (``FlavaModel.encode_image(...).embedding`` /
``encode_text(...).embedding``), written as ``embeddings.safetensors`` (tensors ``image`` and
``text``, float32, one row per item) or ``image_embeddings.npy`` / ``text_embeddings.npy``,
with ``index.jsonl`` naming each row: ``{"modality", "row", "id", "path" | "caption"}`` (a
manifest caption also names its ``image_row``).

``score`` gives, per image-caption pair (a pair manifest, or ``--image X --caption "..."``
repeated), the contrastive cosine (the dot product of the two normalised embeddings) and the
image-text matching probability (softmax of the ITM head's two logits over the fused class
token, the "match" class), printed as a table and optionally written as JSONL.

``--model``: any name :func:`flava_zoo.create_model` takes: a registered name
(``flava-tiny``: random weights), a zoo tag (``flava-base.facebook``), a folder written by
:func:`flava_zoo.save_pretrained` or a flava-zoo ``.ckpt``, resolved once by
:func:`flava_zoo.factory.resolve_model`. The tokenizer is ``--tokenizer``, else the model's own
(:func:`flava_zoo.get_tokenizer`: the folder's ``vocab.txt``, the zoo entry's vocabulary, the
checkpoint's stored one); the image transform is :func:`flava_zoo.get_transform`'s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "EmbedResult",
    "ImageItem",
    "InferenceModel",
    "PairScore",
    "TextItem",
    "embed",
    "embed_main",
    "load_inference_model",
    "read_caption_list",
    "read_image_folder",
    "read_manifest",
    "score_main",
    "score_pairs",
]

EMBEDDINGS_FILE = "embeddings.safetensors"
NPY_FILES = {"image": "image_embeddings.npy", "text": "text_embeddings.npy"}
INDEX_FILE = "index.jsonl"


class InferenceError(ValueError):
    """An input or setting the command cannot work with (exit status 1, no traceback)."""


# ------------------------------------------------------------------------------ model
@dataclass
class InferenceModel:
    """A model ready for inference: eval mode on ``device``, with its tokenizer (``None`` when
    none was found: text cannot be encoded), image transform and text length limit."""

    name: str
    model: Any
    tokenizer: Any
    transform: Any
    device: torch.device
    max_length: int
    source: Any = None
    """The :class:`~flava_zoo.factory.ModelSource` ``name`` resolved to."""

    def _need_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise InferenceError(
                f"{self.name} has no tokenizer: give --tokenizer (a folder with vocab.txt), or a model "
                "folder exported with its vocab.txt"
            )
        return self.tokenizer

    @torch.no_grad()
    def encode_images(self, images: Sequence[Any]) -> Any:
        """The image tower's output for PIL images (``.embedding``: normalised, ``(N, D)``)."""
        pixels = torch.stack([self.transform(im) for im in images]).to(self.device)
        return self.model.encode_image(pixels)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> Any:
        """The text tower's output for captions (``.embedding``: normalised, ``(N, D)``)."""
        enc = self._need_tokenizer()(list(texts), max_length=self.max_length)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        return self.model.encode_text(
            enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids")
        )

    def embed_images(self, images: Sequence[Any]) -> Tensor:
        """Normalised contrastive image embeddings ``(N, D)``, float32 on the CPU."""
        return self.encode_images(images).embedding.float().cpu()

    def embed_texts(self, texts: Sequence[str]) -> Tensor:
        """Normalised contrastive text embeddings ``(N, D)``, float32 on the CPU."""
        return self.encode_texts(texts).embedding.float().cpu()


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise InferenceError(f"--device {name!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InferenceError(f"--device {name}: CUDA is not available here")
    return device


def _tokenizer(source: Any, tokenizer: str | None) -> tuple[Any, str]:
    """``--tokenizer`` when given, else the model's own (:func:`flava_zoo.factory.load_tokenizer`)."""
    from .factory import load_tokenizer
    from .tokenizer import FlavaTokenizer

    if tokenizer:
        return FlavaTokenizer.from_pretrained(tokenizer), f"{tokenizer}/vocab.txt"
    return load_tokenizer(source), source.tokenizer_origin


def load_inference_model(
    model: str, *, device: str = "auto", tokenizer: str | None = None, max_length: int | None = None
) -> InferenceModel:
    """Build ``model`` (name, zoo tag or exported folder, via :func:`flava_zoo.create_model`)
    in eval mode on ``device`` (``auto``: CUDA when available), with its tokenizer and image
    transform (see the module doc). The text length limit is the smallest of ``max_length``,
    the tokenizer's and the model's position embeddings."""
    from .factory import create_model, get_transform, resolve_model

    dev = _device(device)
    source = resolve_model(model)
    net = create_model(source).eval().to(dev)
    cfg = net.config
    if not source.pretrained:
        warnings.warn(f"{model} is an architecture name: its weights are random", stacklevel=2)
    tok, origin = _tokenizer(source, tokenizer)
    if tok is not None and tok.vocab_size > cfg.text.vocab_size:
        raise InferenceError(
            f"the tokenizer ({origin}) has {tok.vocab_size} tokens but {model}'s text embedding has "
            f"{cfg.text.vocab_size}: use the model's own vocabulary"
        )
    transform = get_transform(source)
    limits = [cfg.text.max_position_embeddings] + ([tok.max_length] if tok is not None else [])
    if max_length is not None:
        limits.append(int(max_length))
    return InferenceModel(str(model), net, tok, transform, dev, min(limits), source)


def _itm_head(model: InferenceModel, source: str | None) -> Any:
    """The ITM head from ``source`` (an export folder or a checkpoint / safetensors file), else
    the model folder's ``heads.safetensors``, else a zoo entry's heads; ``None`` if none."""
    from .downstream.base import load_itm_head
    from .models.heads import ITMHead

    if model.model.fusion_encoder is None:
        if source:
            raise InferenceError(
                f"{model.name} has no fusion encoder (fusion='none'): it has no ITM head"
            )
        return None
    dim = model.model.config.multimodal.hidden_size
    if source is None:
        from .factory import resolve_model

        origin = model.source or resolve_model(model.name)
        folder = origin.path
        if origin.kind == "export" and (folder / "heads.safetensors").is_file():
            source = str(folder)
        elif origin.kind == "zoo":
            from .zoo import load_pretraining_heads

            state = {
                k.split("itm_head.", 1)[1]: v
                for k, v in load_pretraining_heads(origin.location).items()
                if k.startswith("itm_head.")
            }
            if not state:
                return None
            head = ITMHead(dim)
            head.load_state_dict(state)
            return head.eval().to(model.device)
        else:
            return None
    try:
        head = load_itm_head(source, dim)
    except (FileNotFoundError, ValueError) as e:
        raise InferenceError(f"ITM head: {e}") from None
    return head.eval().to(model.device)


# ----------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class ImageItem:
    """An image to embed: its ``id`` (relative path, or ``manifest:line``) and file ``path``."""

    id: str
    path: Path


@dataclass(frozen=True)
class TextItem:
    """A caption to embed: its ``id`` (``file:line``), text and, from a manifest, the index of
    its image in the image list (``image_row``)."""

    id: str
    caption: str
    image_row: int | None = None


def read_image_folder(root: str | os.PathLike) -> list[ImageItem]:
    """Every image under ``root`` (any depth, sorted; as
    :class:`~flava_zoo.data.sources.ImageFolderImages` lists them), ids relative to ``root``."""
    from .data.sources import ImageFolderImages

    folder = ImageFolderImages(root)
    return [ImageItem(p.relative_to(folder.root).as_posix(), p) for p in folder.files]


def read_caption_list(path: str | os.PathLike) -> list[TextItem]:
    """One caption a non-blank line of a UTF-8 text file, ids ``file:line``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption list {path} does not exist")
    items = [
        TextItem(f"{path.name}:{number}", line.strip())
        for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1)
        if line.strip()
    ]
    if not items:
        raise InferenceError(f"caption list {path} holds no captions")
    return items


def read_manifest(
    path: str | os.PathLike, image_root: str | os.PathLike | None = None, **kwargs: Any
) -> tuple[list[ImageItem], list[TextItem]]:
    """The images (one per manifest row) and captions (every caption of each row, linked to
    its image by ``image_row``) of a JSONL / CSV / TSV pair manifest, read by
    :class:`~flava_zoo.data.sources.PairManifest` (same fields, validation and
    ``image_root`` rule; ``kwargs`` go to it: ``caption_key``, ``image_key``, ...)."""
    from .data.sources import PairManifest

    manifest = PairManifest(path, image_root=image_root, captions="first", **kwargs)
    bad = getattr(manifest, "_bad", {})  # rows the reader kept as bad samples (not UTF-8)
    images, texts = [], []
    for position, (image, captions, line) in enumerate(
        zip(manifest._images, manifest._captions, manifest._lines)
    ):
        source = f"{manifest.path.name}:{line}"
        if position in bad:
            warnings.warn(f"{source}: skipped: {bad[position]}", stacklevel=2)
            continue
        row = len(images)
        images.append(ImageItem(source, manifest.image_root / image))
        texts += [TextItem(source, c, row) for c in captions if c]
    return images, texts


def _load_image(item: ImageItem, strict: bool) -> Any:
    from .data.sources import decode_image

    try:
        return decode_image(item.path.read_bytes())
    except (OSError, SyntaxError, ValueError) as e:
        if strict:
            raise InferenceError(f"{item.id}: cannot read image {item.path}: {e}") from None
        warnings.warn(f"{item.id}: skipped: cannot read image {item.path}: {e}", stacklevel=3)
        return None


def _batches(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(start + size, n))


def _progress(total: int, desc: str, quiet: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit="item", file=sys.stderr, disable=quiet or None, leave=False
    )


# ------------------------------------------------------------------------------ embed
@dataclass
class EmbedResult:
    """What :func:`embed` wrote: the files, and the rows per modality (and skipped images)."""

    files: list[Path]
    num_images: int
    num_texts: int
    num_skipped: int
    dim: int


def _atomic(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def embed(
    model: InferenceModel,
    out_dir: str | os.PathLike,
    *,
    images: Sequence[ImageItem] = (),
    texts: Sequence[TextItem] = (),
    fmt: str = "safetensors",
    batch_size: int = 64,
    force: bool = False,
    strict: bool = False,
    quiet: bool = False,
) -> EmbedResult:
    """Embed ``images`` and ``texts`` with ``model`` in batches of ``batch_size`` and write
    them to ``out_dir`` (``fmt``: ``safetensors`` or ``npy``) with ``index.jsonl``.

    An unreadable image is skipped with a warning (``strict``: refused) and gets no row, so
    rows and index lines always agree. Existing output files are refused unless ``force``."""
    if fmt not in ("safetensors", "npy"):
        raise InferenceError(f"format must be safetensors or npy, got {fmt!r}")
    if batch_size < 1:
        raise InferenceError(f"batch size must be at least 1, got {batch_size}")
    if not images and not texts:
        raise InferenceError("nothing to embed: give images and / or captions")
    out = Path(out_dir)
    names = (
        [EMBEDDINGS_FILE]
        if fmt == "safetensors"
        else [NPY_FILES[m] for m, items in (("image", images), ("text", texts)) if items]
    ) + [INDEX_FILE]
    existing = [n for n in names if (out / n).exists()]
    if existing and not force:
        raise InferenceError(
            f"{out} already holds {', '.join(existing)}: refusing to overwrite (--force)"
        )
    out.mkdir(parents=True, exist_ok=True)

    index: list[dict[str, Any]] = []
    tensors: dict[str, Tensor] = {}
    skipped = 0
    image_rows: dict[int, int] = {}  # position in `images` -> row written
    if images:
        rows: list[Tensor] = []
        with _progress(len(images), "images", quiet) as bar:
            for batch in _batches(len(images), batch_size):
                loaded = [(i, _load_image(images[i], strict)) for i in batch]
                kept = [(i, im) for i, im in loaded if im is not None]
                skipped += len(loaded) - len(kept)
                if kept:
                    rows.append(model.embed_images([im for _, im in kept]))
                    for i, _ in kept:
                        image_rows[i] = len(image_rows)
                        item = images[i]
                        index.append(
                            {
                                "modality": "image",
                                "row": image_rows[i],
                                "id": item.id,
                                "path": str(item.path),
                            }
                        )
                bar.update(len(batch))
        if not rows:
            raise InferenceError(f"none of the {len(images)} images could be read")
        tensors["image"] = torch.cat(rows)
    if texts:
        rows = []
        with _progress(len(texts), "captions", quiet) as bar:
            for batch in _batches(len(texts), batch_size):
                rows.append(model.embed_texts([texts[i].caption for i in batch]))
                bar.update(len(batch))
        tensors["text"] = torch.cat(rows)
        for j, item in enumerate(texts):
            line: dict[str, Any] = {
                "modality": "text",
                "row": j,
                "id": item.id,
                "caption": item.caption,
            }
            if item.image_row is not None:
                line["image_row"] = image_rows.get(item.image_row)
            index.append(line)

    files = []
    if fmt == "safetensors":
        from safetensors.torch import save_file

        meta = {"format": "pt", "model": model.name, "normalised": "true"}
        path = out / EMBEDDINGS_FILE
        _atomic(
            path,
            lambda p: save_file({k: v.contiguous() for k, v in tensors.items()}, p, metadata=meta),
        )
        files.append(path)
    else:
        import numpy as np

        def npy_writer(array: Any) -> Any:
            def write(p: str) -> None:
                with open(p, "wb") as f:
                    np.save(f, array)

            return write

        for modality, tensor in tensors.items():
            path = out / NPY_FILES[modality]
            _atomic(path, npy_writer(tensor.numpy()))
            files.append(path)
    path = out / INDEX_FILE
    _atomic(
        path,
        lambda p: Path(p).write_text(
            "".join(json.dumps(line) + "\n" for line in index), encoding="utf-8"
        ),
    )
    files.append(path)
    dim = next(iter(tensors.values())).shape[1]
    return EmbedResult(
        files,
        int(tensors["image"].shape[0]) if "image" in tensors else 0,
        int(tensors["text"].shape[0]) if "text" in tensors else 0,
        skipped,
        int(dim),
    )


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="registered name, zoo tag or exported folder"
    )
    parser.add_argument(
        "--tokenizer", help="folder with vocab.txt (default: the model folder's, or the zoo's)"
    )
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, help="caption token limit (default: the model's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _run(main: Any, argv: Sequence[str] | None, prog: str) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse
        return 0 if e.code in (0, None) else 2
    except (InferenceError, FileNotFoundError, FileExistsError, ValueError, OSError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1


def embed_main(argv: Sequence[str] | None = None) -> int:
    """``flava-zoo embed``: images and / or captions to embeddings plus ``index.jsonl``;
    exit 0, 1 on bad input or existing outputs (without ``--force``), 2 on bad usage."""
    return _run(_embed_main, argv, "flava-zoo embed")


def _embed_main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="flava-zoo embed",
        description="Embed images (a folder or a manifest's) and / or captions (a list or a manifest's) "
        "with a model's normalised contrastive embeddings.",
    )
    _add_model_arguments(parser)
    parser.add_argument("--images", help="folder of images (any depth)")
    parser.add_argument("--captions", help="text file, one caption a line")
    parser.add_argument(
        "--manifest", help="JSONL / CSV / TSV pair manifest (its images and captions)"
    )
    parser.add_argument("--image-root", help="folder manifest image paths are relative to")
    parser.add_argument(
        "--only", choices=("image", "text"), help="embed only one modality of a manifest"
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--format", choices=("safetensors", "npy"), default="safetensors")
    parser.add_argument(
        "--strict", action="store_true", help="refuse an unreadable image instead of skipping it"
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")
    args = parser.parse_args(argv)
    if not (args.images or args.captions or args.manifest):
        parser.error("give --images, --captions and / or --manifest")
    if args.manifest and (args.images or args.captions):
        parser.error(
            "--manifest brings its own images and captions: do not combine it with --images / --captions"
        )
    if args.image_root and not args.manifest:
        parser.error("--image-root is for --manifest")
    images: list[ImageItem] = []
    texts: list[TextItem] = []
    if args.manifest:
        images, texts = read_manifest(args.manifest, args.image_root)
        if args.only == "image":
            texts = []
        elif args.only == "text":
            images, texts = [], [TextItem(t.id, t.caption) for t in texts]
    if args.images:
        images = read_image_folder(args.images)
    if args.captions:
        texts = read_caption_list(args.captions)
    model = load_inference_model(
        args.model, device=args.device, tokenizer=args.tokenizer, max_length=args.max_length
    )
    if texts:
        model._need_tokenizer()
    result = embed(
        model,
        args.out,
        images=images,
        texts=texts,
        fmt=args.format,
        batch_size=args.batch_size,
        force=args.force,
        strict=args.strict,
        quiet=args.quiet,
    )
    skipped = f", {result.num_skipped} unreadable images skipped" if result.num_skipped else ""
    print(
        f"embedded {result.num_images} images and {result.num_texts} captions ({result.dim}-d, "
        f"normalised){skipped} with {args.model} -> {', '.join(str(f) for f in result.files)}"
    )
    return 0


# ------------------------------------------------------------------------------ score
@dataclass(frozen=True)
class PairScore:
    """One scored pair: the contrastive ``cosine`` in [-1, 1] and the ITM match probability
    (``None`` without an ITM head)."""

    image: str
    caption: str
    cosine: float
    itm_probability: float | None
    source: str = ""


def score_pairs(
    model: InferenceModel,
    pairs: Sequence[tuple[ImageItem, str]],
    *,
    itm_head: Any = None,
    batch_size: int = 64,
    quiet: bool = False,
) -> list[PairScore]:
    """Score ``(image, caption)`` pairs: the cosine of their normalised embeddings and, with
    ``itm_head``, ``softmax(itm_head(fuse(image, text).cls))[:, 1]``. Unreadable images are
    refused naming the pair."""
    out: list[PairScore] = []
    with _progress(len(pairs), "pairs", quiet) as bar:
        for batch in _batches(len(pairs), batch_size):
            items = [pairs[i] for i in batch]
            pil = [_load_image(item, strict=True) for item, _ in items]
            with torch.no_grad():
                image = model.encode_images(pil)
                text = model.encode_texts([caption for _, caption in items])
                cosine = (image.embedding * text.embedding).sum(-1).float().cpu()
                itm = None
                if itm_head is not None:
                    logits = itm_head(model.model.fuse(image, text).cls).float()
                    itm = logits.softmax(-1)[:, 1].cpu()
            for k, (item, caption) in enumerate(items):
                out.append(
                    PairScore(
                        str(item.path),
                        caption,
                        float(cosine[k]),
                        float(itm[k]) if itm is not None else None,
                        item.id,
                    )
                )
            bar.update(len(batch))
    return out


def _print_table(scores: Sequence[PairScore], width: int = 40) -> None:
    def cut(text: str) -> str:
        return text if len(text) <= width else text[: width - 3] + "..."

    print(f"{'#':>4}  {'cosine':>7}  {'itm':>6}  {'image':<{width}}  caption")
    for i, s in enumerate(scores):
        itm = f"{s.itm_probability:6.3f}" if s.itm_probability is not None else f"{'n/a':>6}"
        print(f"{i:>4}  {s.cosine:7.4f}  {itm}  {cut(s.image):<{width}}  {s.caption}")


def score_main(argv: Sequence[str] | None = None) -> int:
    """``flava-zoo score``: per image-caption pair the contrastive cosine and the ITM
    probability, as a table (and ``--out`` JSONL); exit 0, 1 on bad input, 2 on bad usage."""
    return _run(_score_main, argv, "flava-zoo score")


def _score_main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="flava-zoo score",
        description="Score image-caption pairs: contrastive cosine and ITM match probability.",
    )
    _add_model_arguments(parser)
    parser.add_argument(
        "--manifest", help="JSONL / CSV / TSV pair manifest (each image with each of its captions)"
    )
    parser.add_argument("--image-root", help="folder manifest image paths are relative to")
    parser.add_argument(
        "--image", action="append", default=[], help="an image (repeat, one per --caption)"
    )
    parser.add_argument(
        "--caption", action="append", default=[], help="a caption (repeat, one per --image)"
    )
    parser.add_argument(
        "--itm-head",
        help="export folder with heads.safetensors, or a checkpoint (default: the model's)",
    )
    parser.add_argument("--no-itm", action="store_true", help="only the cosine")
    parser.add_argument("--out", help="also write the scores as JSONL")
    parser.add_argument("--force", action="store_true", help="overwrite --out")
    args = parser.parse_args(argv)
    if args.manifest and (args.image or args.caption):
        parser.error("give --manifest or --image / --caption pairs, not both")
    if not args.manifest:
        if not args.image:
            parser.error("give --manifest or --image X --caption '...' (repeatable)")
        if len(args.image) != len(args.caption):
            parser.error(
                f"{len(args.image)} --image but {len(args.caption)} --caption: give one caption per image"
            )
    if args.out and Path(args.out).exists() and not args.force:
        raise InferenceError(f"{args.out} exists: refusing to overwrite it (--force)")
    if args.manifest:
        images, texts = read_manifest(args.manifest, args.image_root)
        pairs = [(images[t.image_row], t.caption) for t in texts]
        if not pairs:
            raise InferenceError(f"manifest {args.manifest} has no captions to score")
    else:
        for path in args.image:
            if not Path(path).is_file():
                raise FileNotFoundError(f"image {path} does not exist")
        pairs = [
            (ImageItem(f"--image {i}", Path(p)), c)
            for i, (p, c) in enumerate(zip(args.image, args.caption))
        ]
    model = load_inference_model(
        args.model, device=args.device, tokenizer=args.tokenizer, max_length=args.max_length
    )
    model._need_tokenizer()
    head = None if args.no_itm else _itm_head(model, args.itm_head)
    scores = score_pairs(model, pairs, itm_head=head, batch_size=args.batch_size, quiet=args.quiet)
    _print_table(scores)
    if head is None and not args.no_itm:
        print(
            f"(no ITM head for {args.model}: give --itm-head, an export folder with heads.safetensors)"
        )
    if args.out:
        lines = [
            json.dumps(
                {
                    "pair": i,
                    "image": s.image,
                    "caption": s.caption,
                    "cosine": s.cosine,
                    "itm_probability": s.itm_probability,
                    "source": s.source,
                }
            )
            + "\n"
            for i, s in enumerate(scores)
        ]
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        _atomic(out, lambda p: Path(p).write_text("".join(lines), encoding="utf-8"))
        print(f"wrote {len(scores)} scores to {out}")
    return 0
