"""What every downstream LightningModule shares: the backbone, the data it is attached to,
frozen parts, layer-wise learning-rate decay, and the results records it appends."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from ..evaluation.results import append_results, make_records
from ..factory import ModelSource, create_model, resolve_model
from ..models.flava import FlavaModel
from ..models.heads import ITMHead
from ..training.base import FlavaTask
from .data import TaskData

__all__ = [
    "LATE_FUSION",
    "DownstreamModule",
    "late_fusion_features",
    "layer_decay_multipliers",
    "load_itm_head",
    "model_origin",
]

INPUTS = ("image", "text", "multimodal")
POOLINGS = ("cls", "mean", "embedding")
LATE_FUSION = "late_fusion"
"""The features of a multimodal task without the fusion encoder (:meth:`DownstreamModule.encode`)."""


def late_fusion_features(image: Tensor, text: Tensor) -> Tensor:
    """``[u; v; u * v]`` ``(B, 3P)`` of image and text embeddings ``(B, P)``: concatenation
    and elementwise product, the input of a late-fusion MLP head (as CLIP-style baselines
    answer VQA and entailment with a dual encoder)."""
    if image.shape != text.shape:
        raise ValueError(f"image embeddings {tuple(image.shape)} and text embeddings {tuple(text.shape)} differ in shape")
    return torch.cat([image, text, image * text], dim=-1)
_TOWER = {"image": "image_encoder", "text": "text_encoder"}


def model_origin(model: str | ModelSource) -> str:
    """Where the weights of ``model`` come from, for results records
    (:attr:`flava_zoo.factory.ModelSource.origin`)."""
    return resolve_model(model).origin


def layer_decay_multipliers(
    model: FlavaModel, decay: float, inputs: str, prefix: str = "model"
) -> dict[str, float]:
    """Learning-rate multipliers by parameter-name prefix for layer-wise decay (BEiT, ELECTRA).

    Depth 0 is the towers' embeddings, depth ``i + 1`` tower block ``i``, then the fusion
    encoder's input projections and blocks; the head is the top (multiplier 1) and a
    parameter at depth ``d`` gets ``decay ** (top - d)``. Only the towers ``inputs`` uses
    are counted (a text task's top is just above the text tower).
    """
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {decay}")
    if inputs not in INPUTS:
        raise ValueError(f"inputs must be one of {INPUTS}, got {inputs!r}")
    cfg = model.config
    depths = {"image": cfg.image.num_layers, "text": cfg.text.num_layers}
    towers = ["image", "text"] if inputs == "multimodal" else [inputs]
    tower_top = max(depths[t] for t in towers)
    fused = inputs == "multimodal" and model.fusion_encoder is not None
    fusion_layers = cfg.multimodal.num_layers if fused else 0
    top = tower_top + fusion_layers + (1 if fused else 0) + 1

    def scale(depth: int) -> float:
        return decay ** (top - depth)

    out: dict[str, float] = {}
    for tower in towers:
        name = f"{prefix}.{_TOWER[tower]}"
        out[name] = scale(0)
        for i in range(depths[tower]):
            out[f"{name}.encoder.blocks.{i}"] = scale(i + 1)
        out[f"{name}.norm"] = scale(depths[tower])
    if fused:
        fusion = f"{prefix}.fusion_encoder"
        out[fusion] = scale(tower_top + 1)
        out[f"{fusion}.layers"] = scale(top - 1)
        block_root = "layers.encoder.blocks" if cfg.fusion == "merged" else "layers.blocks"
        for j in range(fusion_layers):
            out[f"{fusion}.{block_root}.{j}"] = scale(tower_top + 2 + j)
    return out


def load_itm_head(path: str | Path, dim: int) -> ITMHead:
    """An :class:`ITMHead` from an exported folder with ``heads.safetensors`` (ours, or a
    checkpoint converted by :mod:`flava_zoo.interop`), a pretraining checkpoint
    (``objective.itm_head.*``), a fine-tuning checkpoint (``itm_head.*``), a transformers
    ``FlavaForPreTraining`` file (``itm_head.seq_relationship.*``), a torchmultimodal one
    (``loss.itm_loss.*``), or a safetensors / torch file of those keys. A head of another
    width than ``dim`` is refused, naming both shapes."""
    from ..checkpoint import load_head_state
    from ..interop.heads import itm_head_state
    from ..weights import load_state_dict_file

    if Path(path).is_dir():
        state = {f"itm_head.{k}": v for k, v in load_head_state(path, "itm_head").items()}
    else:
        state = load_state_dict_file(path)
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    head_state = itm_head_state(state)
    if head_state is None:
        raise ValueError(f"{path} holds no ITM head (no 'itm_head.' or 'loss.itm_loss.' keys)")
    head = ITMHead(dim)
    own = head.state_dict()
    wrong = [
        f"{k} is {tuple(v.shape)} in the file, {tuple(own[k].shape)} here"
        for k, v in head_state.items()
        if k in own and v.shape != own[k].shape
    ]
    if wrong:
        raise ValueError(f"{path}: the ITM head does not fit a {dim}-wide fusion encoder: {'; '.join(wrong)}")
    try:
        head.load_state_dict(head_state)
    except RuntimeError as err:
        raise ValueError(f"{path}: the ITM head does not fit a {dim}-wide fusion encoder: {err}") from None
    return head


class DownstreamModule(FlavaTask):
    """Base of the downstream modules: builds the backbone, attaches to a :class:`TaskData`,
    keeps frozen parts in eval mode, and writes results records; the optimiser, its schedule
    and the non-finite guard are :class:`~flava_zoo.training.base.FlavaTask`'s.

    Every checkpoint it saves carries what rebuilds the evaluated model without the recipe
    (``checkpoint["flava_zoo"]``: the model config, the tokenizer vocabulary and settings,
    the transform settings, the task and label set, and the lineage: pretrained source,
    step, epoch). ``model`` may name such a checkpoint (``.ckpt``): the backbone is built
    from it and its lineage carries over to the records.
    """

    evaluation_args: tuple[str, ...] = ("results", "predictions", "submission")
    """Init arguments that describe an evaluation rather than the trained model: when a
    module is rebuilt from a checkpoint, these keep the value the recipe or command line
    gives; every other argument comes from the checkpoint."""

    def __init__(self, model: str, model_overrides: dict[str, Any] | None = None) -> None:
        super().__init__()
        from ..checkpoint import checkpoint_description

        self._source = resolve_model(model)
        self._restored: dict[str, Any] | None = None
        if self._source.kind == "checkpoint":
            self._restored = checkpoint_description(self._source.location)
        self.model = create_model(self._source, **(model_overrides or {}))
        self._frozen_modules: list[nn.Module] = []

    # ---------------------------------------------------------- checkpoints
    @classmethod
    def init_args_from_checkpoint(cls, path: str, saved: dict[str, Any]) -> dict[str, Any]:
        """The init arguments that rebuild this module from checkpoint ``path``, whose saved
        hyperparameters are ``saved``: the backbone comes from the checkpoint itself (its
        stored config already holds any overrides). Subclasses adjust what else the
        checkpoint holds (heads that would otherwise be loaded from elsewhere)."""
        args = dict(saved)
        args["model"] = str(path)
        args["model_overrides"] = None
        return args

    def lineage(self) -> dict[str, Any]:
        """Where the evaluated weights come from: the pretrained source, and for fine-tuned
        weights the checkpoint and the step they were saved at (JSON-serialisable)."""
        if self._restored is not None:
            saved = dict(self._restored.get("lineage") or {})
            saved["checkpoint"] = str(Path(str(self.hparams.model)).resolve())
            return saved
        out: dict[str, Any] = {"pretrained": self._source.origin, "pretrained_name": str(self.hparams.model)}
        trainer = self._trainer
        ckpt = getattr(trainer, "ckpt_path", None) if trainer is not None else None
        if ckpt:
            out["checkpoint"] = str(Path(ckpt).resolve())
        if trainer is not None and self.global_step > 0:
            out["step"] = int(self.global_step)
        return out

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store what rebuilds this module's model without the recipe (see the class doc)."""
        from ..checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_KEY

        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        tokenizer = transform = task = None
        label_names = None
        if isinstance(dm, TaskData):
            task = dm.task_name
            tok = dm.tokenizer if dm.needs_tokenizer else None
            tokenizer = tok.to_dict() if tok is not None else None
            transform = dm.transform_settings()
            label_names = self.hparams.get("label_names")
        lineage = self.lineage()
        lineage.pop("checkpoint", None)
        lineage.update(step=int(self.global_step), epoch=int(self.current_epoch))
        if task is not None:
            lineage["task"] = task
        cls = type(self)
        checkpoint[CHECKPOINT_KEY] = {
            "format": CHECKPOINT_FORMAT,
            "module": f"{cls.__module__}.{cls.__qualname__}",
            "model_config": self.model.config.to_dict(),
            "tokenizer": tokenizer,
            "transform": transform,
            "task": task,
            "label_names": label_names,
            "lineage": lineage,
        }

    def check_restored_task(self, dm: TaskData) -> None:
        """Refuse a checkpoint trained on another task than ``dm``'s, naming both."""
        if self._restored is None:
            return
        trained = self._restored.get("task")
        if trained is not None and trained != dm.task_name:
            raise ValueError(
                f"checkpoint {self.hparams.model} was trained on {trained!r}, but the data is "
                f"{dm.task_name!r}: evaluate it on its own task"
            )

    # ------------------------------------------------------------------- data
    def check_data_fits(self, dm: L.LightningDataModule) -> None:
        """Refuse, at setup (before the first step), data the backbone cannot take: a text
        ``max_length`` above its ``text.max_position_embeddings`` or an ``image_size`` that is
        not a multiple of its ``image.patch_size``; the message names both numbers and the
        data field to change (:func:`~flava_zoo.data.datamodules.check_data_fits_model`)."""
        from ..data.datamodules import check_data_fits_model

        check_data_fits_model(dm, self.model.config, str(self.hparams.model))

    def task_data(self) -> TaskData:
        """The trainer's data module; it must be a :class:`TaskData`."""
        trainer = self._trainer
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        if not isinstance(dm, TaskData):
            raise TypeError(
                f"{type(self).__name__} needs a flava_zoo.downstream.TaskData data module, got "
                f"{type(dm).__name__}"
            )
        return dm

    def freeze_modules(self, modules: list[nn.Module | None]) -> None:
        """Stop gradients for ``modules`` and keep them in eval mode."""
        for module in modules:
            if module is None:
                continue
            module.requires_grad_(False)
            module.eval()
            self._frozen_modules.append(module)

    def train(self, mode: bool = True):
        """Set train mode, keeping frozen parts in eval mode (no dropout noise)."""
        super().train(mode)
        for module in self._frozen_modules:
            module.eval()
        return self

    def unused_modules(self, inputs: str) -> list[nn.Module | None]:
        """Backbone parts a task reading ``inputs`` never runs (``late_fusion``: the fusion
        encoder, its two embeddings being the features)."""
        m = self.model
        if inputs == LATE_FUSION:
            return [m.fusion_encoder]
        parts: list[nn.Module | None] = [m.image_projection, m.text_projection]
        if inputs == "image":
            parts += [m.text_encoder, m.fusion_encoder]
        elif inputs == "text":
            parts += [m.image_encoder, m.fusion_encoder]
        return parts

    def encode(self, batch: Mapping[str, Any], inputs: str, pooling: str = "cls") -> Tensor:
        """Features ``(B, D)`` of the part ``inputs`` names (image tower, text tower or fusion
        encoder): its class token (``cls``), the mean of its tokens (``mean``, padding left
        out) or, for a tower, its normalised contrastive embedding (``embedding``).

        ``late_fusion`` features need no fusion encoder: ``[u; v; u * v]`` of the image and
        text towers' normalised contrastive embeddings ``u`` and ``v`` (CLIP-style baselines
        of vision-language tasks feed these to an MLP; :func:`late_fusion_features`)."""
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        m = self.model
        if inputs == LATE_FUSION:
            image = m.encode_image(batch["pixel_values"]).embedding
            text = m.encode_text(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids")).embedding
            return late_fusion_features(image, text)
        if inputs == "image":
            out = m.encode_image(batch["pixel_values"])
        else:
            text = m.encode_text(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"))
            if inputs == "text":
                out = text
            else:
                if pooling == "embedding":
                    raise ValueError("multimodal features have no contrastive embedding: pool 'cls' or 'mean'")
                out = m.fuse(m.encode_image(batch["pixel_values"]), text)
        if pooling == "embedding":
            return out.embedding
        states = out.last_hidden_state
        if pooling == "cls":
            return states[:, 0]
        if out.attention_mask is None:
            return states.mean(1)
        keep = out.attention_mask[:, : states.shape[1]].to(states.dtype)[..., None]
        return (states * keep).sum(1) / keep.sum(1).clamp_min(1.0)

    def feature_dim(self, inputs: str) -> int:
        cfg = self.model.config
        if inputs == "image":
            return cfg.image.hidden_size
        if inputs == "text":
            return cfg.text.hidden_size
        if inputs == LATE_FUSION:
            return 3 * cfg.projection_dim
        if self.model.fusion_encoder is None:
            raise ValueError(
                "multimodal tasks need a fusion encoder; this model has fusion='none' (a dual "
                "encoder): give the module late_fusion=true (--model.init_args.late_fusion=true) "
                "for a late-fusion head over its two embeddings"
            )
        return cfg.multimodal.hidden_size

    # ---------------------------------------------------------------- results
    def model_source(self) -> str:
        """Where the evaluated weights come from (the model argument, plus the checkpoint or
        the fine-tuning of this run), in words; :meth:`lineage` gives the same as data."""
        if self._restored is not None:
            lin = self.lineage()
            step = f" {lin['step']} steps" if "step" in lin else ""
            return f"{lin.get('pretrained', 'unknown source')}, fine-tuned{step}: checkpoint {lin['checkpoint']}"
        origin = self._source.origin
        trainer = self._trainer
        ckpt = getattr(trainer, "ckpt_path", None) if trainer is not None else None
        if ckpt:
            return f"{origin}, fine-tuned: {Path(ckpt).resolve()}"
        if trainer is not None and self.global_step > 0:
            return f"{origin}, fine-tuned {self.global_step} steps in this run"
        return origin

    def predictions_path(self) -> Path:
        """``predictions`` when set, else ``predictions.jsonl`` in the run folder."""
        given = self.hparams.get("predictions")
        if given:
            return Path(given)
        return Path(self.trainer.default_root_dir) / "predictions.jsonl"

    def submission_dir(self) -> Path:
        """``submission`` when set, else ``submission/`` in the run folder: where the official
        submission files of a task that has them are written."""
        given = self.hparams.get("submission")
        if given:
            return Path(given)
        return Path(self.trainer.default_root_dir) / "submission"

    def write_predictions(self, rows: list[dict[str, Any]]) -> Path:
        """Write ``rows`` (one JSON object per example) to :meth:`predictions_path` as JSON
        lines, replacing the file atomically (:func:`flava_zoo.checkpoint._atomic_write`:
        a temporary file, then a rename; its mode follows the umask). Predictions are
        written by one process: with more, it refuses. Returns the path written."""
        import json
        import sys

        from ..checkpoint import _atomic_write

        if self.trainer.world_size > 1:
            raise ValueError("predictions are written by one process; predict with devices=1")
        if not rows:
            raise ValueError(f"{self.task_data().task_name}: nothing to predict (the split yielded no samples)")
        text = "".join(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n" for row in rows)
        path = self.predictions_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        print(f"flava-zoo predict: {len(rows)} predictions -> {path}", file=sys.stderr)
        return path

    def results_path(self) -> Path:
        """``results`` when set, else ``results.jsonl`` in the run folder."""
        given = self.hparams.get("results")
        if given:
            return Path(given)
        return Path(self.trainer.default_root_dir) / "results.jsonl"

    def record_model_name(self) -> str:
        """The ``model`` field of records: the pretrained model as the run named it (for a
        rebuilt checkpoint, the name its fine-tuning started from)."""
        if self._restored is not None:
            return str((self._restored.get("lineage") or {}).get("pretrained_name") or self.hparams.model)
        return str(self.hparams.model)

    def record(
        self,
        metrics: Mapping[str, float],
        split: str,
        num_samples: int,
        hyperparameters: Mapping[str, Any] | None = None,
        unit: str = "%",
    ) -> None:
        """Append one results record per metric (on the global-zero process). ``metrics`` are
        in ``unit`` (percent for every metric flava-zoo reports); ``hyperparameters`` are
        values the evaluation selected (e.g. the probe's L2 strength), recorded as such."""
        if num_samples < 1:
            raise ValueError(
                f"{self.task_data().task_name} {split}: evaluated on zero samples; nothing is recorded"
            )
        dm = self.task_data()
        records = make_records(
            {k: float(v) for k, v in metrics.items()},
            model=self.record_model_name(),
            model_source=self.model_source(),
            task=dm.task_name,
            split=split,
            num_samples=int(num_samples),
            config={"module": type(self).__name__, "hparams": dict(self.hparams), "data": dict(dm.hparams)},
            unit=unit,
            hyperparameters=dict(hyperparameters or {}),
            lineage=self.lineage(),
        )
        if self.trainer.is_global_zero:
            append_results(self.results_path(), records)
            import sys

            print(f"flava-zoo: {len(records)} results records ({dm.task_name} {split}) -> {self.results_path()}",
                  file=sys.stderr)  # fmt: skip


def gather_count(module: L.LightningModule, count: int) -> int:
    """``count`` summed over processes."""
    if module.trainer.world_size > 1:
        total = module.all_gather(torch.tensor(count, device=module.device))
        return int(total.sum())
    return int(count)
