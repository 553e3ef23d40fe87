"""Exported weights: one folder holding exactly the files of one model, replaced as a unit.

An export holds ``model.safetensors`` (the backbone), ``config.json`` (the model config,
the image transform settings under ``"transform"``, training ``"metadata"`` and the list
of the export's ``"files"``), ``heads.safetensors`` (pretraining heads ITM / MLM / MIM / MMM,
when there are any), ``vocab.txt`` + ``tokenizer_config.json`` (when the export has a
tokenizer) and ``README.md``, its model card (architecture, sizes, parameter count, how it
was trained, its config and metrics when known). Nothing else: an export written over an
older one keeps none of the older files.

The folder is written to a hidden sibling (``.NAME.tmp-*``) and put in place as a whole: by
one atomic exchange where the system has it (Linux ``renameat2``), otherwise by renaming
the old folder aside (``.NAME.old-*``) and the new one in. A crash at any point leaves the
old export or the new one, never a mix; when it struck between the two renames,
:func:`read_config` / :func:`load_pretrained` put the old folder back. Files and folders
get the modes the umask gives (0644 / 0755 under umask 022), so a shared zoo is readable.

This is the format the quickstart writes, the zoo publishes and :func:`create_model` reads
back. Safetensors cannot run code on load, unlike a pickle.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from .config import FlavaConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
HEADS_NAME = "heads.safetensors"
VOCAB_NAME = "vocab.txt"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
CARD_NAME = "README.md"
EXPORT_FILES = (WEIGHTS_NAME, CONFIG_NAME, HEADS_NAME, VOCAB_NAME, TOKENIZER_CONFIG_NAME, CARD_NAME)
"""Every file an export may hold; heads and tokenizer files only when it has them."""
COMPANION_FILES = ("codebook.safetensors",)
"""Files other code writes into an export after :func:`save_pretrained` (the image codebook
of :func:`flava_zoo.interop.save_converted`); a new export replaces them too."""


def _atomic_write(path: Path, write: Any) -> None:
    """Replace one file atomically: ``write(tmp)`` fills a sibling temporary file, renamed over
    ``path``. The file gets the mode the umask gives (0644 under umask 022)."""
    path = Path(path)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        mode = tmp.stat().st_mode & 0o777  # what the umask gives a new file
        write(str(tmp))
        os.chmod(tmp, mode)  # safetensors writes its files 0600 whatever the umask
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ----------------------------------------------------------- folder replaced as a unit
def _fsync(path: Path, directory: bool = False) -> None:
    with suppress(OSError):
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_file(path: Path, write: Callable[[str], Any]) -> None:
    """Write one file of an export being staged: ``write(path)``, give it the mode the umask
    gives (its staging folder's, less the execute bits; safetensors writes 0600), flush it."""
    write(str(path))
    os.chmod(path, path.parent.stat().st_mode & 0o666)
    _fsync(path)


def _rename(src: Path, dst: Path) -> None:
    """Rename a folder (one step of putting an export in place)."""
    os.rename(src, dst)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); ``False``
    where the system or the file system cannot, and nothing was changed."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _discard(path: Path) -> None:
    """Remove a staging or set-aside folder."""
    shutil.rmtree(path)


def _target(directory: str | os.PathLike) -> Path:
    """The folder an export goes to: a symlink's target, so the link stays."""
    path = Path(directory)
    if path.is_symlink():
        path = path.resolve()
    if path.name in ("", ".", ".."):
        path = Path(os.path.abspath(path))
    return path


def _asides(directory: Path) -> list[Path]:
    """Older exports of ``directory`` set aside by an interrupted replacement, oldest first."""
    found = []
    for path in directory.parent.glob(f".{glob.escape(directory.name)}.old-*"):
        stamp = path.name.rsplit(".old-", 1)[1].split("-", 1)[0]
        if path.is_dir() and stamp.isdigit():
            found.append((int(stamp), path))
    return [path for _, path in sorted(found)]


def _complete(folder: Path) -> bool:
    """Whether ``folder`` holds a config.json and every file it lists."""
    try:
        record = json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return False
    files = record.get("files", [WEIGHTS_NAME]) if isinstance(record, dict) else []
    return all((folder / str(name)).is_file() for name in files)


def _locate(directory: str | os.PathLike) -> Path:
    """The export at ``directory``; when a replacement was interrupted between its renames (the
    folder is missing, the old one set aside), the old one is put back first (or, where it
    cannot be moved, read where it lies)."""
    path = Path(directory)
    if path.is_dir():
        return path
    target = _target(path)  # a symlink's target
    if os.path.lexists(target) or not target.parent.is_dir():
        return path
    asides = [a for a in _asides(target) if _complete(a)]
    if not asides:
        return path
    with suppress(OSError):
        os.rename(asides[-1], target)
    return path if path.is_dir() else asides[-1]


_STAGING: set[str] = set()
"""Staging folders this process is writing now."""


def _host() -> str:
    import hashlib
    import socket

    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _make_staging(directory: Path) -> Path:
    while True:
        name = f".{directory.name}.tmp-{_host()}-{os.getpid()}-{secrets.token_hex(4)}"
        staging = directory.parent / name
        try:
            os.mkdir(staging, 0o777)  # the umask applies, as for any folder
        except FileExistsError:
            continue
        _STAGING.add(str(staging))
        return staging


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _clean_leftovers(target: Path) -> None:
    """Remove what interrupted exports of ``target`` left beside it, now that it is in place:
    folders set aside, and staging folders of this machine's processes that are gone (or of
    this process, not being written)."""
    prefix = f".{target.name}.tmp-{_host()}-"
    for path in target.parent.glob(f".{glob.escape(target.name)}.*"):
        name = path.name
        if name.startswith(prefix):
            pid = name[len(prefix):].split("-", 1)[0]
            if not pid.isdigit() or str(path) in _STAGING:
                continue
            if int(pid) != os.getpid() and _alive(int(pid)):
                continue
        elif path not in _asides(target):
            continue
        with suppress(OSError):
            _discard(path)


def _replace_dir(staging: Path, target: Path) -> None:
    """Put the complete folder ``staging`` at ``target``: by one exchange, or by renaming the
    old folder aside and the new one in; then remove the old one."""
    if not os.path.lexists(target):
        _rename(staging, target)
        _fsync(target.parent, directory=True)
        return
    if _exchange(staging, target):
        _fsync(target.parent, directory=True)
        with suppress(OSError):  # staging now holds the old export
            _discard(staging)
        return
    for attempt in range(3):
        aside = target.parent / f".{target.name}.old-{time.time_ns()}-{secrets.token_hex(3)}"
        _rename(target, aside)
        try:
            _rename(staging, target)
        except OSError as err:
            with suppress(OSError):  # put the old export back
                if not os.path.lexists(target):
                    _rename(aside, target)
            # a reader restored the old one in between (the target is back): set it aside again
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST) and attempt < 2 and os.path.lexists(staging):
                continue
            raise
        break
    _fsync(target.parent, directory=True)
    with suppress(OSError):
        _discard(aside)


def check_export_target(directory: str | os.PathLike, ignore: tuple[str, ...] = ()) -> Path:
    """Refuse, before anything is written, a ``directory`` that an export must not replace: a
    file, or a folder holding anything but an export's files (names in ``ignore`` aside).
    Returns the folder the export will go to."""
    target = _target(directory)
    cwd = Path.cwd().resolve()
    if target.resolve() == cwd or target.resolve() in cwd.parents:
        raise ValueError(f"{directory} is (or holds) the working folder; write the export to a folder of its own")
    if os.path.lexists(target) and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder: it cannot hold an export")
    if not target.is_dir():
        return target
    entries = sorted(p.name for p in target.iterdir())
    allowed = set(EXPORT_FILES) | set(COMPANION_FILES) | set(ignore)
    try:
        record = json.loads((target / CONFIG_NAME).read_text())
        allowed |= {str(name) for name in record.get("files", [])}
    except (OSError, ValueError, AttributeError):
        pass
    foreign = [name for name in entries if name not in allowed]
    if foreign:
        raise FileExistsError(
            f"{target} holds {foreign[:5]}{' ...' if len(foreign) > 5 else ''}, which are not "
            "files of an export; an export replaces its whole folder, so write it to a new or "
            "empty folder (or move those away)"
        )
    return target


# ------------------------------------------------------------------- what goes in
def default_transform(config: FlavaConfig) -> dict[str, Any]:
    """The evaluation image transform settings of a model with ``config``
    (:func:`flava_zoo.transforms.image_transform` with ``train=False``)."""
    from .transforms import FLAVA_MEAN, FLAVA_STD

    return {
        "image_size": config.image.image_size,
        "mean": list(FLAVA_MEAN),
        "std": list(FLAVA_STD),
        "interpolation": "bicubic",
        "resize": "shorter side, then centre crop",
    }


def _transform_record(config: FlavaConfig, transform: Mapping[str, Any] | None) -> dict[str, Any]:
    record = default_transform(config) | dict(transform or {})
    for key in ("mean", "std"):
        values = record[key]
        if len(values) != 3 or not all(isinstance(v, (int, float)) for v in values):
            raise ValueError(f"transform {key!r} must be three numbers, got {values!r}")
        record[key] = [float(v) for v in values]
    return record


def _as_tokenizer(tokenizer: Any) -> Any:
    if tokenizer is None or hasattr(tokenizer, "to_dict"):
        return tokenizer
    if isinstance(tokenizer, (str, os.PathLike)):
        from .tokenizer import FlavaTokenizer

        return FlavaTokenizer.from_pretrained(tokenizer)
    raise TypeError(f"tokenizer must be a FlavaTokenizer or a tokenizer folder, got {type(tokenizer).__name__}")


def _count(state: Mapping[str, Any], prefix: str = "") -> int:
    return sum(int(v.numel()) for k, v in state.items() if k.startswith(prefix))


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list, tuple)):
        return f"`{json.dumps(value)}`"
    return str(value)


def model_card(
    record: Mapping[str, Any],
    state: Mapping[str, Any],
    head_state: Mapping[str, Any] | None = None,
    tokenizer: Any = None,
    facts: Mapping[str, Any] | None = None,
    name: str = "EXPORT",
) -> str:
    """The model card (``README.md``) of an export: what the model is (towers, sizes,
    parameter count), how it was trained (``facts``: ``command``, ``stages`` as a list of
    ``{"stage", "steps", ...}``, other entries listed as they are), the metrics it was
    evaluated on (``facts["metrics"]``, with its ``"unit"``), its preprocessing and config.
    ``record`` is the export's ``config.json`` content, ``state`` the backbone's weights."""
    facts = dict(facts or {})
    config = record["config"]
    image, text, fusion = config["image"], config["text"], config["multimodal"]
    metrics = dict(facts.pop("metrics", None) or {})
    title = facts.pop("title", None) or f"FLAVA model {name}"
    description = facts.pop("description", None)
    command = facts.pop("command", None)
    stages = list(facts.pop("stages", None) or [])
    towers = [
        ("image encoder (ViT)", "image_encoder.", image, f"{image['image_size']} px, {image['patch_size']} px patches"),
        ("text encoder", "text_encoder.", text,
         f"vocabulary {text['vocab_size']}, up to {text['max_position_embeddings']} tokens"),
        (f"fusion encoder ({config['fusion']})", "fusion_encoder.", fusion, ""),
    ]
    total = _count(state)
    lines = [f"# {title}", ""]
    if description:
        lines += [str(description), ""]
    lines += [
        f"A FLAVA image-text model (flava-zoo {record.get('flava_zoo_version', '?')}): an image "
        f"encoder, a text encoder and a {config['fusion']} multimodal fusion encoder, with "
        f"contrastive projections to {config['projection_dim']} dimensions. "
        f"{total:,} parameters in the backbone"
        + (f", {_count(head_state or {}):,} more in the pretraining heads." if head_state else "."),
        "",
        "## Architecture",
        "",
    ]
    rows = [
        (label, part["num_layers"], part["hidden_size"], part["num_heads"], part["intermediate_size"],
         f"{_count(state, prefix):,}", extra)
        for label, prefix, part, extra in towers
    ]
    rows.append(("projections and logit scale", "", "", "", "",
                 f"{total - sum(_count(state, p) for _, p, _, _ in towers):,}", ""))
    lines += _table(("part", "layers", "hidden", "heads", "MLP", "parameters", "notes"), rows)
    if head_state:
        heads = sorted({k.split(".", 1)[0] for k in head_state})
        lines += ["", "Pretraining heads (`heads.safetensors`): "
                  + ", ".join(f"`{h}` ({_count(head_state, h + '.'):,})" for h in heads) + "."]
    lines += ["", "## Training", ""]
    if command:
        lines += ["Command:", "", "```bash", str(command), "```", ""]
    if stages:
        keys = ["stage", "steps"] + sorted({k for s in stages for k in s} - {"stage", "steps"})
        lines += _table(tuple(keys), [tuple(_fmt(s.get(k, "")) for k in keys) for s in stages]) + [""]
    extra = {k: v for k, v in facts.items() if v is not None} | {
        f"metadata.{k}": v for k, v in (record.get("metadata") or {}).items()
    }
    lines += [f"- {k}: {_fmt(v)}" for k, v in extra.items()]
    if not (command or stages or extra):
        lines.append("Not recorded.")
    lines += ["", "## Evaluation", ""]
    unit = metrics.pop("unit", None)
    if metrics:
        lines += _table(("metric", f"value{f' ({unit})' if unit else ''}"),
                        [(k, _fmt(v)) for k, v in metrics.items()])
    else:
        lines.append("No metrics recorded with this export.")
    transform = record.get("transform") or {}
    lines += ["", "## Preprocessing", ""]
    if tokenizer is not None:
        tok = tokenizer.to_dict()
        lines.append(f"- text: WordPiece, {len(tok['vocab'])} tokens (`vocab.txt`), lowercase "
                     f"{str(tok['lowercase']).lower()}, max_length {tok['max_length']} "
                     "(`tokenizer_config.json`)")
    else:
        lines.append("- text: no tokenizer in this export; bring the one it was trained with")
    lines += [
        f"- images: {transform.get('image_size')} px, {transform.get('interpolation')} resize of the "
        f"{transform.get('resize')}, normalised with mean {transform.get('mean')} and std "
        f"{transform.get('std')} (`config.json`, `transform`)",
        "",
        "## Use",
        "",
        "```python",
        "import flava_zoo",
        f'model = flava_zoo.create_model("{name}")',
        "```",
        "",
        "## Files",
        "",
        *[f"- `{f}`" for f in record.get("files", [])],
        "",
        "## Config",
        "",
        "```json",
        json.dumps(config, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def save_pretrained(
    model: Any,
    directory: str | Path,
    metadata: dict[str, Any] | None = None,
    heads: dict[str, Any] | None = None,
    tokenizer: Any = None,
    transform: Mapping[str, Any] | None = None,
    card: Mapping[str, Any] | str | None = None,
) -> Path:
    """Write ``model`` (a :class:`FlavaModel`) as an export folder ``directory``, replacing any
    export there as a whole (see the module docstring); returns the folder.

    ``metadata`` (JSON-serialisable) is stored in ``config.json``, e.g. the training recipe.
    ``heads`` maps a head's name (``itm_head``, ``mlm_head``, ...) to its module; they go to
    ``heads.safetensors`` as ``NAME.PARAMETER`` keys (read back by :func:`load_head_state`).
    ``tokenizer`` (a :class:`~flava_zoo.tokenizer.FlavaTokenizer` or a tokenizer folder)
    writes ``vocab.txt`` and ``tokenizer_config.json``. ``transform`` overrides the image
    settings stored in ``config.json`` under ``"transform"`` (:func:`default_transform`).
    ``card`` is the model card's text, or facts for it (:func:`model_card`). A folder holding
    anything but an export's files is refused (:func:`check_export_target`).
    """
    from .version import __version__

    target = check_export_target(directory)
    metadata = dict(metadata or {})
    json.dumps(metadata)  # refuse what config.json cannot hold before writing anything
    tokenizer = _as_tokenizer(tokenizer)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    head_state = {
        f"{name}.{key}": value.detach().contiguous().cpu()
        for name, head in (heads or {}).items()
        if head is not None
        for key, value in head.state_dict().items()
    }
    files = [WEIGHTS_NAME, CONFIG_NAME, CARD_NAME]
    files += [HEADS_NAME] if head_state else []
    files += [VOCAB_NAME, TOKENIZER_CONFIG_NAME] if tokenizer is not None else []
    record = {
        "architecture": "flava",
        "flava_zoo_version": __version__,
        "config": model.config.to_dict(),
        "metadata": metadata,
        "transform": _transform_record(model.config, transform),
        "files": sorted(files),
    }
    config_text = json.dumps(record, indent=2)
    if isinstance(card, str):
        card_text = card
    else:
        card_text = model_card(record, state, head_state, tokenizer, card, target.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _make_staging(target)
    try:
        _write_file(staging / WEIGHTS_NAME, lambda p: save_file(state, p, metadata={"format": "pt"}))
        if head_state:
            _write_file(staging / HEADS_NAME, lambda p: save_file(head_state, p, metadata={"format": "pt"}))
        if tokenizer is not None:
            tok = tokenizer.to_dict()
            vocab_text = "".join(f"{t}\n" for t in tok["vocab"])
            tok_config = json.dumps({"lowercase": tok["lowercase"], "max_length": tok["max_length"]}, indent=2)
            _write_file(staging / VOCAB_NAME, lambda p: Path(p).write_text(vocab_text, encoding="utf-8"))
            _write_file(staging / TOKENIZER_CONFIG_NAME,
                        lambda p: Path(p).write_text(tok_config + "\n", encoding="utf-8"))
        _write_file(staging / CARD_NAME, lambda p: Path(p).write_text(card_text, encoding="utf-8"))
        _write_file(staging / CONFIG_NAME, lambda p: Path(p).write_text(config_text, encoding="utf-8"))
        _fsync(staging, directory=True)
        _replace_dir(staging, target)
    except BaseException:
        with suppress(OSError):  # a partial folder, or the old export after an exchange
            if os.path.lexists(staging):
                _discard(staging)
        raise
    finally:
        _STAGING.discard(str(staging))
    with suppress(OSError):
        _clean_leftovers(target)
    return Path(directory)


def read_config(directory: str | Path) -> FlavaConfig:
    """Read the :class:`FlavaConfig` of an exported folder (restoring it first when a
    replacement was interrupted between its renames)."""
    path = _locate(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: not an exported flava-zoo folder")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if "config" not in record:
        raise ValueError(f"{path} has no 'config' field")
    return FlavaConfig.from_dict(record["config"])


def load_pretrained(directory: str | Path, strict: bool = True, **overrides: Any) -> Any:
    """Build the model an exported folder describes and load its weights.

    ``overrides`` may change only settings that leave the weights' shapes alone (for
    example ``fusion`` cannot change, ``gradient_checkpointing`` can).
    """
    from .models.flava import FlavaModel

    directory = _locate(directory)
    config = read_config(directory)
    if overrides:
        config = config.replace(**overrides)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} does not exist")
    model = FlavaModel(config)
    model.load_state_dict(load_file(str(weights)), strict=strict)
    return model


def load_head_state(directory: str | Path, name: str) -> dict[str, Any]:
    """The state dict of pretraining head ``name`` (e.g. ``itm_head``) from an exported folder's
    ``heads.safetensors``; a clear error when the folder has no such file or head."""
    path = _locate(directory) / HEADS_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: the folder holds no pretraining heads (exports written by "
            "flava-zoo pretraining carry them)"
        )
    state = load_file(str(path))
    prefix = f"{name}."
    head = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not head:
        names = sorted({k.split(".", 1)[0] for k in state})
        raise ValueError(f"{path} holds no {name!r}; it has {names}")
    return head


# ------------------------------------------------------------- training checkpoints
CHECKPOINT_KEY = "flava_zoo"
"""Key of a Lightning checkpoint under which a flava-zoo module stores what rebuilds it."""

CHECKPOINT_FORMAT = 1


def is_training_checkpoint(name: str | Path) -> bool:
    """Whether ``name`` is a file that looks like a Lightning checkpoint (``.ckpt``)."""
    path = Path(str(name))
    return path.suffix == ".ckpt" and path.is_file()


def read_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """The whole Lightning checkpoint dict at ``path``, read without running code
    (``torch.load(weights_only=True)``, memory-mapped so a large file costs little)."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"refusing to load {path}: it holds more than tensors and plain data ({err})") from None
    except (RuntimeError, EOFError) as err:
        raise ValueError(f"{path} is not a readable checkpoint: {err}") from err
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} is not a Lightning checkpoint (it holds a {type(ckpt).__name__})")
    return ckpt


def checkpoint_description(path: str | Path, ckpt: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a flava-zoo training checkpoint says about itself (``checkpoint[CHECKPOINT_KEY]``):
    ``module`` (class path), ``model_config``, ``tokenizer`` (vocabulary and settings, or
    ``None``), ``transform`` (image settings), ``task``, ``label_names`` and ``lineage``
    (pretrained source, step, epoch). Raises ``ValueError`` for a checkpoint without it."""
    ckpt = read_training_checkpoint(path) if ckpt is None else ckpt
    info = ckpt.get(CHECKPOINT_KEY)
    if not isinstance(info, dict) or "model_config" not in info:
        raise ValueError(
            f"{path} carries no flava-zoo model description (no {CHECKPOINT_KEY!r} entry): it was "
            "written by another program or by flava-zoo before 0.2; evaluate it with the recipe's "
            "model, or fine-tune again"
        )
    return info


def load_from_training_checkpoint(path: str | Path, prefix: str = "model.", **overrides: Any) -> Any:
    """The :class:`FlavaModel` a flava-zoo training checkpoint holds: built from its stored
    config, then its ``prefix``-ed weights loaded. Nothing is downloaded."""
    from .config import FlavaConfig
    from .models.flava import FlavaModel

    ckpt = read_training_checkpoint(path)
    info = checkpoint_description(path, ckpt)
    config = FlavaConfig.from_dict(info["model_config"])
    if overrides:
        config = config.replace(**overrides)
    model = FlavaModel(config)
    state = {k[len(prefix):]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith(prefix)}
    if not state:
        raise ValueError(f"{path} holds no weights under {prefix!r}")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path}: its weights do not fit its stored config: {err}") from None
    return model
