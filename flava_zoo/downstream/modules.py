"""Fine-tuning with a task head: image, text, sentence-pair and multimodal classification,
VQA with soft targets, and the STS-B regression.

:class:`FinetuneModule` reads what its :class:`~flava_zoo.downstream.TaskData` says: the
inputs (image tower, text tower, or fusion encoder class token), the label set (its head's
width), the loss and the official metrics. The test loop scores whole splits with
torchmetrics and appends one results record per metric.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection

from ..models.heads import ClassificationHead
from ..training.guard import DEFAULT_MAX_SKIPPED_STEPS, nonfinite_guard
from .base import (
    INPUTS,
    LATE_FUSION,
    DownstreamModule,
    gather_count,
    layer_decay_multipliers,
    load_itm_head,
)
from .data import TaskData

__all__ = ["LOSSES", "FinetuneModule", "prediction_rows", "task_metrics"]

LOSSES = ("cross_entropy", "bce", "mse")


def task_metrics(dm: TaskData, num_classes: int) -> MetricCollection:
    """The official metrics of ``dm``'s task as a torchmetrics collection (its family's
    :attr:`~flava_zoo.tasks.TaskSpec.metrics`)."""
    if dm.family.metrics is None:
        raise ValueError(f"{dm.task_name} is not scored by a classification head")
    return dm.family.metrics(num_classes, dm.task_options)


def default_loss(dm: TaskData) -> str:
    """The family's loss (soft-target BCE for VQA, cross-entropy otherwise); MSE for a regression."""
    if dm.is_regression:
        return "mse"
    if dm.family.loss is None:
        raise ValueError(f"{dm.task_name} has no fine-tuning loss for a classification head")
    return dm.family.loss


class FinetuneModule(DownstreamModule):
    """Fine-tune a FLAVA backbone with a classification (or regression) head.

    Args:
        model: a registered architecture (``flava-tiny``, random init), a zoo ``arch.tag``
            or an exported folder.
        model_overrides: config fields to override by name.
        inputs: ``image``, ``text`` or ``multimodal``; default: what the task reads.
        loss: ``cross_entropy``, ``bce`` (VQA soft targets, summed over answers) or ``mse``
            (regression); default: the task's.
        num_classes: head outputs; default: the task's label count. A value that does not
            match the task's label set is an error.
        head_hidden: width of the head's hidden layer (an MLP head, as FLAVA's VQA head);
            ``None`` for a linear head.
        itm_head_from: initialise the head from a pretrained image-text matching head (an
            exported folder with ``heads.safetensors``, or a checkpoint): for two-class
            multimodal tasks whose class 1 means "the text fits the image" (the memes-like
            task), so fine-tuning starts from the pretraining's matching decision.
        late_fusion: for a multimodal task, feed the head ``[u; v; u * v]`` of the image and
            text towers' contrastive embeddings instead of the fusion encoder's class token
            (a late-fusion head: how a dual encoder, ``fusion: none``, answers fusion tasks;
            on a fused model it tells what the fusion encoder adds). Give it an MLP head
            (``head_hidden``); ignored for image and text tasks.
        dropout: dropout before the classifier.
        freeze_backbone: train the head only.
        lr: peak learning rate of the head (and of the top layer under layer decay). This,
            ``layer_decay``, ``backbone_lr_multiplier`` and the next four are the optimiser
            settings (:class:`~flava_zoo.training.base.OptimizerConfig`).
        layer_decay: layer-wise learning-rate decay factor in (0, 1]; ``None`` for off.
        backbone_lr_multiplier: learning-rate multiplier of the whole backbone.
        weight_decay: AdamW weight decay (not on norms, biases, embeddings).
        betas: AdamW betas.
        warmup_steps: linear warm-up; a cosine decay follows.
        min_lr_ratio: the cosine ends at ``lr * min_lr_ratio``.
        max_skipped_steps: updates with a non-finite loss or gradient are skipped; this many
            in a row stop the run (:mod:`flava_zoo.training.guard`).
        results: results file (JSON lines); default ``results.jsonl`` in the run folder.
        label_names: the head's label set (filled in from the data when the module is set up).
        predictions: ``flava-zoo predict``'s output, one JSON line per example (``split``,
            ``id``, ``prediction``, ``scores``); default ``predictions.jsonl`` in the run folder.
        submission: folder for the official submission files of tasks that have them
            (VQAv2 results JSON, the GLUE server's TSVs, Hateful Memes CSV); default
            ``submission/`` in the run folder.
    """

    def __init__(
        self,
        model: str = "flava-tiny",
        model_overrides: dict[str, Any] | None = None,
        inputs: str | None = None,
        loss: str | None = None,
        num_classes: int | None = None,
        head_hidden: int | None = None,
        itm_head_from: str | None = None,
        late_fusion: bool = False,
        dropout: float = 0.1,
        freeze_backbone: bool = False,
        lr: float = 1e-4,
        layer_decay: float | None = None,
        backbone_lr_multiplier: float = 1.0,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 50,
        min_lr_ratio: float = 0.0,
        max_skipped_steps: int = DEFAULT_MAX_SKIPPED_STEPS,
        results: str | None = None,
        label_names: list[str] | None = None,
        predictions: str | None = None,
        submission: str | None = None,
    ) -> None:
        super().__init__(model, model_overrides)
        self.save_hyperparameters()
        if inputs is not None and inputs not in INPUTS:
            raise ValueError(f"inputs must be one of {INPUTS}, got {inputs!r}")
        if loss is not None and loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
        self.head: nn.Module | None = None
        if inputs is not None and num_classes is not None:
            self._build_head(inputs, num_classes)
        self.val_metrics: MetricCollection | None = None
        self.test_metrics = nn.ModuleList()
        self._counts: list[int] = []
        self._test_names: list[str] = []
        self._predictions: list[dict[str, Any]] = []

    def features(self, inputs: str) -> str:
        """What the head reads for a task with ``inputs``: ``late_fusion`` for a multimodal
        task when the module was given ``late_fusion``, else ``inputs``."""
        return LATE_FUSION if inputs == "multimodal" and self.hparams.get("late_fusion") else inputs

    def _build_head(self, inputs: str, num_classes: int) -> None:
        hp = self.hparams
        features = self.features(inputs)
        self.head = ClassificationHead(self.feature_dim(features), num_classes, hp.head_hidden, hp.dropout)
        if hp.itm_head_from:
            if features != "multimodal" or num_classes != 2 or hp.head_hidden:
                raise ValueError(
                    "itm_head_from needs a linear two-class head on multimodal inputs; this task has "
                    f"inputs={features!r}, {num_classes} classes, head_hidden={hp.head_hidden}"
                )
            itm = load_itm_head(hp.itm_head_from, self.feature_dim(inputs))
            self.head.pooler.load_state_dict(itm.pooler.state_dict())
            self.head.classifier.load_state_dict(itm.classifier.state_dict())

    # ---------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        """Take inputs, label set, loss and metrics from the data; check they fit the head."""
        dm = self.task_data()
        hp = self.hparams
        if dm.family.head is None:
            raise ValueError(f"{dm.family.name} tasks use flava_zoo.downstream.RetrievalModule, not FinetuneModule")
        if hp.inputs is not None and hp.inputs != dm.inputs:
            raise ValueError(f"{dm.task_name} reads {dm.inputs} inputs, but the module was given inputs={hp.inputs!r}")
        self.check_restored_task(dm)
        self.check_data_fits(dm)
        inputs = dm.inputs
        n = dm.num_labels
        names = dm.label_names
        if hp.num_classes is not None and hp.num_classes != n:
            shown = f" ({', '.join(names[:10])}{', ...' if len(names) > 10 else ''})" if names else ""
            raise ValueError(f"{dm.task_name} has {n} labels{shown} but the head has {hp.num_classes} outputs")
        if hp.label_names is not None and list(hp.label_names) != list(names):
            raise ValueError(
                f"{dm.task_name}'s label set differs from the one this head was trained on "
                f"(first difference at position {_first_difference(hp.label_names, names)})"
            )
        hp.inputs, hp.num_classes, hp.label_names = inputs, n, list(names)
        hp.loss = hp.loss or default_loss(dm)
        if hp.loss == "mse" and n != 1:
            raise ValueError(f"loss 'mse' needs a one-output regression task; {dm.task_name} has {n} labels")
        if hp.loss == "bce" and dm.family.targets != "soft":
            raise ValueError(f"loss 'bce' needs soft targets (VQA); {dm.task_name} has hard labels")
        if self.head is None:
            self._build_head(inputs, n)
        dm.attach_model(hp.model, self.model.config.text.vocab_size if inputs != "image" else None)
        self._frozen_modules = []
        self.freeze_modules(self.unused_modules(self.features(inputs)))
        if hp.freeze_backbone:
            self.freeze_modules([self.model])
        self.val_metrics = task_metrics(dm, n)
        if stage == "predict":
            self._test_names = dm.test_split_names
        if stage == "test":
            self._test_names = dm.test_split_names
            self.test_metrics = nn.ModuleList(task_metrics(dm, n) for _ in self._test_names)

    @classmethod
    def init_args_from_checkpoint(cls, path: str, saved: dict[str, Any]) -> dict[str, Any]:
        """As the base class; the head's weights are in the checkpoint, so ``itm_head_from``
        (where the head started) is not read again."""
        args = super().init_args_from_checkpoint(path, saved)
        args["itm_head_from"] = None
        return args

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the model description (see :class:`DownstreamModule`) and the label set with
        the weights (checked again when testing)."""
        super().on_save_checkpoint(checkpoint)
        checkpoint["label_names"] = self.hparams.label_names

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint whose head does not fit the data's label set, naming both (and
        remember its optimiser settings, :meth:`FlavaTask.on_load_checkpoint`)."""
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("label_names")
        ours = self.hparams.label_names
        if saved is not None and ours is not None and list(saved) != list(ours):
            raise ValueError(
                f"the checkpoint's head was trained on {len(saved)} labels, the data has {len(ours)}: "
                f"a different label set (first difference at position {_first_difference(saved, ours)})"
            )
        if self.head is not None:
            mine = {f"head.{k}": tuple(v.shape) for k, v in self.head.state_dict().items()}
            for key, value in checkpoint.get("state_dict", {}).items():
                if key in mine and tuple(value.shape) != mine[key]:
                    raise ValueError(
                        f"the checkpoint's {key} has shape {tuple(value.shape)}, this task's head "
                        f"{mine[key]}: the checkpoint belongs to another task or label set"
                    )

    # -------------------------------------------------------------- forward
    def forward(self, batch: dict[str, Any]) -> Tensor:
        """Head outputs ``(B, num_classes)``."""
        if self.head is None:
            raise RuntimeError("the head is built when the module is attached to its data (setup)")
        return self.head(self.encode(batch, self.features(self.hparams.inputs)))

    def loss(self, logits: Tensor, batch: dict[str, Any]) -> Tensor:
        kind = self.hparams.loss
        if kind == "bce":
            targets = batch["targets"].to(logits.dtype)
            return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / logits.shape[0]
        if kind == "mse":
            return F.mse_loss(logits[:, 0].float(), batch["labels"].float())
        return F.cross_entropy(logits.float(), batch["labels"])

    def _update(self, metrics: MetricCollection, logits: Tensor, batch: dict[str, Any]) -> None:
        dm = self.task_data()
        spec = dm.family
        preds = spec.metric_inputs(logits.detach().float(), self.hparams.label_names, dm.task_options)
        metrics.update(preds, batch[spec.metric_target])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        logits = self(batch)
        loss = self.loss(logits, batch)
        nonfinite_guard(self).observe_loss(loss)
        self.log("train/loss", loss, prog_bar=True, batch_size=logits.shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self(batch)
        self.log("val/loss", self.loss(logits, batch), batch_size=logits.shape[0], sync_dist=True)
        self._update(self.val_metrics, logits, batch)

    def on_validation_epoch_end(self) -> None:
        """Log the validation metrics in percent (torchmetrics' fractions x100)."""
        from ..evaluation.results import to_percent

        if self.val_metrics is None or not self.val_metrics[next(iter(self.val_metrics.keys()))].update_called:
            return
        values = to_percent(self.val_metrics.compute())
        self.log_dict({f"val/{k}": v for k, v in values.items()}, prog_bar=True)
        self.val_metrics.reset()

    def head_is_untrained(self) -> bool:
        """Whether the task head never saw a training step: not rebuilt from a checkpoint,
        no ``--ckpt_path``, no step in this run."""
        trainer = self._trainer
        ckpt = getattr(trainer, "ckpt_path", None) if trainer is not None else None
        return self._restored is None and not ckpt and self.global_step == 0

    def lineage(self) -> dict[str, Any]:
        """As the base class; an untrained head says so (``"head": "untrained"``)."""
        out = super().lineage()
        if self.head_is_untrained():
            out["head"] = "untrained"
        return out

    def _warn_if_untrained(self, command: str) -> None:
        if self.head_is_untrained():
            import sys

            print(
                f"flava-zoo {command}: the {self.task_data().task_name} head was never trained (no "
                "--ckpt_path, no fit in this run): these are the numbers of an untrained head; pass "
                "--ckpt_path last (or a checkpoint file) to evaluate a fine-tuned model",
                file=sys.stderr,
            )

    def on_test_epoch_start(self) -> None:
        self._warn_if_untrained("test")
        self._counts = [0] * len(self._test_names)
        for metrics in self.test_metrics:
            metrics.reset()

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        logits = self(batch)
        self._update(self.test_metrics[dataloader_idx], logits, batch)
        self._counts[dataloader_idx] += logits.shape[0]

    def on_test_epoch_end(self) -> None:
        """Score every test split over all its samples, log, and append results records, in
        percent (torchmetrics' fractions x100: MCC and correlations too, as GLUE shows them)."""
        from ..evaluation.results import to_percent

        single = len(self._test_names) == 1
        for name, metrics, count in zip(self._test_names, self.test_metrics, self._counts):
            total = gather_count(self, count)
            if total == 0:
                raise ValueError(f"{self.task_data().task_name} {name}: the test split yielded no samples")
            values = to_percent(metrics.compute())
            prefix = "test" if single else f"test/{name}"
            self.log_dict({f"{prefix}/{k}": v for k, v in values.items()})
            self.record(values, name, total, unit="%")

    # ------------------------------------------------------------ predict
    def on_predict_epoch_start(self) -> None:
        self._warn_if_untrained("predict")
        self._predictions = []

    @torch.no_grad()
    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Collect one prediction row per example (written when the epoch ends)."""
        rows = prediction_rows(self.task_data(), self.hparams.label_names, self(batch).float(), batch["ids"])
        split = self._test_names[dataloader_idx]
        for row in rows:
            row["split"] = split
        self._predictions.extend(rows)

    def on_predict_epoch_end(self) -> None:
        """Write the predictions file, and the official submission files where the task has them."""
        from .submission import write_submission

        self.write_predictions(self._predictions)
        write_submission(self.task_data(), self._predictions, self.submission_dir())
        self._predictions = []

    # ------------------------------------------------------------ optimiser
    def lr_multipliers(self) -> dict[str, float]:
        """The backbone's multiplier (``backbone_lr_multiplier``) and, with ``layer_decay``,
        one per depth (:func:`~flava_zoo.downstream.base.layer_decay_multipliers`); the head
        trains at ``lr``."""
        hp = self.hparams
        mults: dict[str, float] = {}
        if hp.backbone_lr_multiplier != 1.0:
            mults["model"] = hp.backbone_lr_multiplier
        if hp.layer_decay is not None:
            decay = layer_decay_multipliers(self.model, hp.layer_decay, hp.inputs)
            mults.update({k: v * hp.backbone_lr_multiplier for k, v in decay.items()})
        return mults


VQA_TOP_SCORES = 5
"""A VQA prediction row keeps the scores of its top answers only (the vocabulary is large)."""


def prediction_rows(dm: TaskData, label_names: list[str], logits: Tensor, ids: list[Any]) -> list[dict[str, Any]]:
    """One prediction row per example from a fine-tuned head's ``logits``: ``id``,
    ``prediction`` (a label name, a VQA answer, or a regression value) and ``scores``
    (per-label probabilities; for VQA the top answers' sigmoid scores; for the memes family
    the probability of label 1 under ``proba``), as the family declares
    (:attr:`~flava_zoo.tasks.TaskSpec.prediction`, ``positive_proba``)."""
    spec = dm.family
    rows = []
    if dm.is_regression:
        for i, ident in enumerate(ids):
            rows.append({"id": ident, "prediction": float(logits[i, 0]), "scores": {}})
        return rows
    if spec.prediction == "sigmoid_top":
        probs = logits.sigmoid()
        top = probs.topk(min(VQA_TOP_SCORES, probs.shape[1]), dim=1)
        for i, ident in enumerate(ids):
            scores = {label_names[j]: round(float(p), 6) for p, j in zip(top.values[i].tolist(), top.indices[i].tolist())}
            rows.append({"id": ident, "prediction": label_names[int(top.indices[i, 0])], "scores": scores})
        return rows
    probs = logits.softmax(-1)
    for i, ident in enumerate(ids):
        scores = {name: round(float(p), 6) for name, p in zip(label_names, probs[i].tolist())}
        row = {"id": ident, "prediction": label_names[int(probs[i].argmax())], "scores": scores}
        if spec.positive_proba:
            row["proba"] = float(probs[i, 1])
        rows.append(row)
    return rows


def _first_difference(a: list[str], b: list[str]) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"{i}: {x!r} vs {y!r}"
    return f"{min(len(a), len(b))}: {len(a)} vs {len(b)} labels"
