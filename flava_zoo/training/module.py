"""The pretraining LightningModule: one class for FLAVA's three stages.

``stage="image"`` trains the image tower with MIM, ``stage="text"`` the text tower with
MLM, ``stage="multimodal"`` everything with the contrastive, ITM and MMM losses (plus
unimodal MIM / MLM when their weights are positive). A stage starts from an earlier
stage's checkpoint, from unimodal weights, or from scratch; any tower can be frozen.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..checkpoint import save_pretrained
from ..factory import create_model
from ..models.pretraining import LOSS_TERMS, FlavaForPretraining, LossWeights
from .base import OPTIMIZER_HPARAMS, FlavaTask
from .guard import DEFAULT_MAX_SKIPPED_STEPS, nonfinite_guard
from .init import load_stage_weights, load_unimodal_weights

__all__ = ["OPTIMIZER_HPARAMS", "STAGES", "FlavaPretrainModule"]

STAGES = ("image", "text", "multimodal")
HEAD_TERMS = {"itm": "itm_head", "mlm": "mlm_head", "mim": "mim_head", "mmm_text": "mmm_text_head",
              "mmm_image": "mmm_image_head"}
"""Loss term -> head: an export writes the heads of the terms its stage trains."""
STAGE_WEIGHTS = {
    "image": {"mim": 1.0},
    "text": {"mlm": 1.0},
    "multimodal": {"contrastive": 1.0, "itm": 1.0, "mmm_image": 1.0, "mmm_text": 1.0},
}
TOWERS = {"image": "image_encoder", "text": "text_encoder", "fusion": "fusion_encoder"}


class FlavaPretrainModule(FlavaTask):
    """Pretrain a FLAVA model in stages.

    Args:
        model: a registered architecture (``flava-tiny``), a zoo name or an exported folder.
        model_overrides: config fields to override by name (``{"fusion": "co_attention"}``).
        stage: ``image`` (MIM), ``text`` (MLM) or ``multimodal``.
        init_from: weights of an earlier stage: a Lightning ``.ckpt`` or an exported folder.
        init_image_from: a torchvision ViT state dict for the image tower.
        init_text_from: a Hugging Face BERT folder (config.json + weights) for the text tower.
        freeze: towers to freeze, from ``image``, ``text``, ``fusion``.
        loss_weights: per-term weights; unset terms take the stage's defaults (all 1 for
            the stage's own losses, 0 for the rest).
        itm_hard_negatives: draw ITM negatives from contrastive similarity (ALBEF-style).
        itm_negatives: ``swap`` (FLAVA's: half the pairs get another text, one fusion pass,
            MMM on the matched half) or ``extra`` (a second fusion pass over ``B`` negatives).
        lr: peak learning rate (FLAVA: 1e-3 at batch 8192; scale for your batch). This and
            the next six are the optimiser settings (:class:`~flava_zoo.training.base.OptimizerConfig`).
        lr_multipliers: per-tower multipliers, keys ``image``, ``text``, ``fusion``.
        weight_decay: AdamW weight decay, not applied to norms, biases and embeddings.
        betas: AdamW betas.
        warmup_steps: linear warm-up length; a cosine decay follows to the last step.
        min_lr_ratio: the cosine ends at ``lr * min_lr_ratio``.
        decay_steps: decay over only the last ``decay_steps`` steps, holding the peak rate
            from the end of warm-up until then (``None``: the cosine starts after warm-up).
        codebook_path: dVAE encoder weights for ``mim_target="codebook"``.
        export_dir: where to write the final weights (safetensors + config) after fit.
        seed: seed of the ITM negative sampler.
        max_skipped_steps: an update whose loss or gradients are not finite is skipped
            (logged as ``train/skipped_steps``); one more than this many in a row stops
            the run (see :mod:`flava_zoo.training.guard`). ``0`` stops at the first.
        fused_every: train the fused terms (ITM, MMM: the fusion encoder and the masked
            tower passes they need) on every ``fused_every``-th step only, the contrastive
            and unimodal terms on every step; ``1`` (FLAVA's) trains every term on every
            step. On the shapes world ``2`` learned somewhat less per step than ``1`` at 0.69
            of its cost, about as much or more per second (benchmarks/results/learning_speed.md). Keyed by the global step, so
            a resumed run continues the same pattern. Under DDP, whose strategy must then
            look for unused parameters, :meth:`setup` turns that on.
    """

    def __init__(
        self,
        model: str = "flava-tiny",
        model_overrides: dict[str, Any] | None = None,
        stage: str = "multimodal",
        init_from: str | None = None,
        init_image_from: str | None = None,
        init_text_from: str | None = None,
        freeze: list[str] | None = None,
        loss_weights: dict[str, float] | None = None,
        itm_hard_negatives: bool = False,
        itm_negatives: str = "swap",
        lr: float = 1e-3,
        lr_multipliers: dict[str, float] | None = None,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.0,
        decay_steps: int | None = None,
        codebook_path: str | None = None,
        export_dir: str | None = None,
        seed: int = 0,
        max_skipped_steps: int = DEFAULT_MAX_SKIPPED_STEPS,
        fused_every: int = 1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if int(fused_every) < 1:
            raise ValueError(f"fused_every must be at least 1, got {fused_every}")
        unknown = sorted(set(freeze or ()) - set(TOWERS))
        if unknown:
            raise ValueError(f"freeze: unknown tower(s) {unknown}; choose from {sorted(TOWERS)}")
        unknown = sorted(set(lr_multipliers or {}) - set(TOWERS))
        if unknown:
            raise ValueError(f"lr_multipliers: unknown tower(s) {unknown}; choose from {sorted(TOWERS)}")
        weights = {name: 0.0 for name in LOSS_TERMS} | STAGE_WEIGHTS[stage] | dict(loss_weights or {})
        backbone = create_model(model, **(model_overrides or {}))
        image_tokenizer = None
        if codebook_path is not None:
            from ..image_tokenizer import DalleImageTokenizer

            image_tokenizer = DalleImageTokenizer.from_file(codebook_path)
        self.objective = FlavaForPretraining(
            backbone, LossWeights(**weights), itm_hard_negatives, image_tokenizer, seed, itm_negatives
        )
        if init_from:
            load_stage_weights(self.objective, init_from)
        if init_image_from or init_text_from:
            load_unimodal_weights(backbone, image=init_image_from, text=init_text_from)
        self.frozen = self._freeze(stage, set(freeze or ()), weights)
        self._last_time: float | None = None
        self._skipped = 0

    @property
    def model(self):
        """The :class:`FlavaModel` being trained."""
        return self.objective.model

    def setup(self, stage: str) -> None:
        """Refuse, before the first step, a data module whose text ``max_length`` or images
        the model cannot take (:func:`~flava_zoo.data.datamodules.check_data_fits_model`),
        and an ``export_dir`` that an export must not replace (a folder of other files), so
        a long run does not fail only at its end."""
        from ..checkpoint import check_export_target
        from ..data.datamodules import check_data_fits_model

        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None:
            check_data_fits_model(datamodule, self.model.config, str(self.hparams.model))
        if stage == "fit" and self.hparams.export_dir:
            check_export_target(self.hparams.export_dir)
        if stage == "fit" and self.hparams.fused_every > 1 and self.hparams.stage == "multimodal":
            self._let_ddp_skip_the_fusion_encoder()

    def _let_ddp_skip_the_fusion_encoder(self) -> None:
        """With ``fused_every > 1`` the fusion encoder and its heads get no gradient on most
        steps, which DDP refuses unless it looks for unused parameters: turn that on (this
        hook runs before the strategy wraps the model) and say so once."""
        from lightning.pytorch.strategies import DDPStrategy
        from lightning.pytorch.utilities import rank_zero_info

        strategy = self._trainer.strategy if self._trainer is not None else None
        kwargs = getattr(strategy, "_ddp_kwargs", None)
        if isinstance(strategy, DDPStrategy) and isinstance(kwargs, dict) and not kwargs.get("find_unused_parameters"):
            kwargs["find_unused_parameters"] = True
            rank_zero_info(
                f"fused_every={self.hparams.fused_every}: the fusion encoder is unused on some steps, so DDP "
                "looks for unused parameters (as strategy=ddp_find_unused_parameters_true)"
            )

    def _freeze(self, stage: str, freeze: set[str], weights: dict[str, float]) -> list[str]:
        """Stop gradients for everything this stage does not train; return the frozen names."""
        obj, model = self.objective, self.objective.model
        used: list[torch.nn.Module] = []
        if stage == "image":
            used = [model.image_encoder, obj.mim_head]
        elif stage == "text":
            used = [model.text_encoder, obj.mlm_head]
        else:
            used = [model.image_encoder, model.text_encoder]
            if weights["contrastive"] > 0:
                used += [model.image_projection, model.text_projection]
            if model.fusion_encoder is not None and weights["itm"] + weights["mmm_image"] + weights["mmm_text"] > 0:
                used.append(model.fusion_encoder)
            for term, head in (("mim", obj.mim_head), ("mlm", obj.mlm_head), ("itm", obj.itm_head),
                               ("mmm_image", obj.mmm_image_head), ("mmm_text", obj.mmm_text_head)):
                if weights[term] > 0 and head is not None:
                    used.append(head)
        used_ids = {id(p) for m in used for p in m.parameters()}
        if stage == "multimodal" and weights["contrastive"] > 0:
            used_ids.add(id(model.logit_scale))
        for tower in freeze:
            module = getattr(model, TOWERS[tower])
            if module is not None:
                used_ids -= {id(p) for p in module.parameters()}
        frozen = []
        for name, param in obj.named_parameters():
            if id(param) not in used_ids:
                param.requires_grad_(False)
                frozen.append(name)
        return frozen

    def train(self, mode: bool = True):
        """Set train mode, keeping fully frozen towers in eval mode (no dropout noise)."""
        super().train(mode)
        for tower in self.hparams.freeze or ():
            module = getattr(self.model, TOWERS[tower])
            if module is not None:
                module.eval()
        return self

    def forward(self, batch: dict[str, Tensor]):
        """The pretraining objective on ``batch`` (see :class:`FlavaForPretraining`)."""
        return self.objective(batch)

    @staticmethod
    def _batch_size(batch: dict[str, Any]) -> int:
        for key in ("pixel_values", "input_ids", "masked_input_ids"):
            if key in batch:
                return int(batch[key].shape[0])
        return 1

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """One optimisation step; a non-finite loss or gradient skips the update (or stops the
        run) in :meth:`on_before_optimizer_step`."""
        self._skipped += int(batch.pop("num_skipped", 0))
        fused = self.global_step % self.hparams.fused_every == 0
        out = self.objective(batch) if fused else self.objective(batch, fused=False)
        nonfinite_guard(self).observe_loss(out.loss)
        bs = self._batch_size(batch)
        terms = {f"train/{k}": v for k, v in out.terms.items() if k != "loss"}
        self.log_dict(terms, batch_size=bs)
        self.log("train/loss", out.terms["loss"], prog_bar=True, batch_size=bs)
        now = time.perf_counter()
        if self._last_time is not None:
            self.log("train/samples_per_sec", bs / max(now - self._last_time, 1e-9), batch_size=bs)
        self._last_time = now
        return out.loss

    def on_train_epoch_end(self) -> None:
        """Log how many bad samples the data pipeline skipped this epoch."""
        self.log("data/skipped_samples", float(self._skipped))
        self._skipped = 0

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Validation losses, and embeddings for retrieval when the batch is paired."""
        batch.pop("num_skipped", None)
        out = self.objective(batch)
        bs = self._batch_size(batch)
        self.log_dict({f"val/{k}": v for k, v in out.terms.items()}, batch_size=bs, sync_dist=True)
        if "pixel_values" in batch and "input_ids" in batch:
            with torch.no_grad():
                img = self.model.encode_image(batch["pixel_values"]).embedding
                txt = self.model.encode_text(batch["input_ids"], batch.get("attention_mask")).embedding
            self._val_embeddings.append((img.float().cpu(), txt.float().cpu()))

    def on_validation_epoch_start(self) -> None:
        """Start collecting validation embeddings."""
        self._val_embeddings: list[tuple[Tensor, Tensor]] = []

    def on_validation_epoch_end(self) -> None:
        """Log image-text retrieval recall over the whole validation set (this process's part)."""
        if not self._val_embeddings:
            return
        from ..evaluation.retrieval import retrieval_recall

        img = torch.cat([e[0] for e in self._val_embeddings])
        txt = torch.cat([e[1] for e in self._val_embeddings])
        metrics = retrieval_recall(img @ txt.T, ks=(1, 5))
        self.log_dict({f"val/{k}": v for k, v in metrics.items()})
        self._val_embeddings = []

    def lr_multipliers(self) -> dict[str, float]:
        """Per-tower learning-rate multipliers (``lr_multipliers``: ``image``, ``text``, ``fusion``)."""
        return {f"objective.model.{TOWERS[k]}": v for k, v in (self.hparams.lr_multipliers or {}).items()}

    def on_train_end(self) -> None:
        """Export the trained weights (and the data module's tokenizer) when ``export_dir`` is set."""
        if self.hparams.export_dir and self.trainer.is_global_zero:
            self.export(self.hparams.export_dir)

    def export(self, directory: str | Path, card: dict[str, Any] | None = None) -> Path:
        """Write an export folder (:func:`~flava_zoo.checkpoint.save_pretrained`, replaced as a
        whole): the backbone, the heads this stage trains (``heads.safetensors``), the data
        module's tokenizer when there is one, and a model card with the training facts
        (command line, stage, steps, starting weights, loss weights). ``card`` adds or
        replaces facts, e.g. a run's ``stages`` list and ``metrics``."""
        import shlex
        import sys

        obj, hp = self.objective, self.hparams
        weights = asdict(obj.weights)
        heads = {name: getattr(obj, name, None) for term, name in HEAD_TERMS.items() if weights[term] > 0}
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        steps = int(self.trainer.global_step) if self._trainer is not None else 0
        stage = {"stage": hp.stage, "steps": steps, "lr": hp.lr}
        stage |= {k: hp[k] for k in ("init_from", "init_image_from", "init_text_from", "freeze") if hp.get(k)}
        facts: dict[str, Any] = {
            "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
            if sys.argv and sys.argv[0] not in ("", "-c")
            else None,
            "stages": [stage],
            "loss weights": {k: v for k, v in weights.items() if v > 0},
            **(card or {}),
        }
        return save_pretrained(
            self.model, directory, metadata={"stage": hp.stage, "steps": steps}, heads=heads,
            tokenizer=getattr(datamodule, "tokenizer", None), card=facts,
        )
