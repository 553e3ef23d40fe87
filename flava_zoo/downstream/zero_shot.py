"""Zero-shot image classification from the contrastive embeddings, CLIP-style.

Each class name is put into every prompt template, the prompts' normalised text embeddings
are averaged and renormalised into the class's embedding, and an image's class is the one
whose embedding is nearest its image embedding. Optionally the top-k classes of each image
are re-ranked by the ITM head's match score, averaged over the class's prompts.

``flava-zoo test --config recipes/zeroshot/shapes_classification.yaml`` runs it through
:class:`ZeroShotClassifier`; :func:`class_embeddings` and :func:`zero_shot_logits` work on
any model with ``encode_text`` / ``encode_image``.

Metrics are recorded in percent. With re-ranking, the embedding ranking's metrics keep their
names (``accuracy``) and the re-ranked ones carry the prefix :data:`RERANK_PREFIX`
(``itm_rerank_accuracy``), with ``itm_rerank_k`` in the records' hyperparameters; retrieval
follows the same convention (``itm_rerank_image_to_text_R@1``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from ..evaluation.results import to_percent
from ..models.heads import ITMHead
from .base import DownstreamModule, gather_count, load_itm_head

__all__ = ["RERANK_PREFIX", "ZeroShotClassifier", "class_embeddings", "itm_rerank", "zero_shot_logits"]

RERANK_PREFIX = "itm_rerank_"
"""Prefix of the metric names of ITM re-ranked results (``itm_rerank_accuracy``,
``itm_rerank_image_to_text_R@1``); the unprefixed names are the embedding ranking's."""


@torch.no_grad()
def class_embeddings(
    model: Any,
    tokenizer: Callable[..., dict[str, Tensor]],
    class_names: Sequence[str],
    prompts: Callable[[str], Sequence[str]],
    device: torch.device | str = "cpu",
    batch_size: int = 256,
) -> Tensor:
    """``(C, P)`` class embeddings: per class, the renormalised mean of its prompts' normalised
    text embeddings (``model.encode_text(...).embedding``)."""
    if not class_names:
        raise ValueError("zero-shot classification needs at least one class name")
    out = []
    for name in class_names:
        texts = list(prompts(name))
        if not texts:
            raise ValueError(f"no prompts for class {name!r}")
        embs = []
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start : start + batch_size])
            enc = {k: v.to(device) for k, v in enc.items()}
            emb = model.encode_text(enc["input_ids"], enc.get("attention_mask"), enc.get("token_type_ids")).embedding
            embs.append(F.normalize(emb.float(), dim=-1))
        out.append(F.normalize(torch.cat(embs).mean(0), dim=-1))
    return torch.stack(out)


def zero_shot_logits(image_embeddings: Tensor, classes: Tensor, scale: float | Tensor = 100.0) -> Tensor:
    """``(B, C)`` logits: scaled cosine similarity of normalised image and class embeddings."""
    return scale * F.normalize(image_embeddings.float(), dim=-1) @ classes.float().T


@torch.no_grad()
def itm_rerank(
    logits: Tensor,
    k: int,
    match_score: Callable[[Tensor, Tensor], Tensor],
) -> Tensor:
    """Re-rank each row's top ``k`` columns by ``match_score(rows, cols)`` (ITM match scores,
    one per (row, column) pair). Re-ranked columns keep their places above all the others;
    the returned scores order the columns as the final ranking."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    rows = torch.arange(logits.shape[0], device=logits.device)[:, None].expand_as(top)
    scores = match_score(rows.reshape(-1), top.reshape(-1)).reshape(top.shape).float()
    out = logits.float() - logits.float().max() - 1.0  # every re-ranked column outranks the rest
    out = out.scatter(1, top, 1.0 + scores.sigmoid())
    return out


class ZeroShotClassifier(DownstreamModule):
    """Zero-shot image classification (run with ``flava-zoo test``).

    Args:
        model: a registered architecture, a zoo ``arch.tag`` or an exported folder.
        model_overrides: config fields to override by name.
        class_names: class names in label order; default: the task's label names.
        templates: prompt templates with ``{}`` for the class name; default: the task's own
            prompts (the shapes world's attribute-filled noun phrases, ``"a photo of a {}."`` elsewhere).
        itm_rerank_k: re-rank each image's top-k classes by ITM score (0: off).
        itm_head_from: checkpoint holding the ITM head (``objective.itm_head.*`` or
            ``itm_head.*``), needed for re-ranking.
        results: results file; default ``results.jsonl`` in the run folder.
        predictions: ``flava-zoo predict``'s output, one JSON line per image with its class
            probabilities (softmax of the scaled cosine similarities); default
            ``predictions.jsonl`` in the run folder.
    """

    fit_refusal = "zero-shot classification runs with `flava-zoo test`, not `fit`"

    def __init__(
        self,
        model: str = "flava-tiny",
        model_overrides: dict[str, Any] | None = None,
        class_names: list[str] | None = None,
        templates: list[str] | None = None,
        itm_rerank_k: int = 0,
        itm_head_from: str | None = None,
        results: str | None = None,
        predictions: str | None = None,
    ) -> None:
        super().__init__(model, model_overrides)
        self.save_hyperparameters()
        if itm_rerank_k < 0:
            raise ValueError(f"itm_rerank_k must be non-negative, got {itm_rerank_k}")
        self.itm_head: ITMHead | None = None
        if itm_rerank_k:
            if itm_head_from is None:
                raise ValueError("itm_rerank_k needs an ITM head: pass itm_head_from (a pretraining checkpoint)")
            self.itm_head = load_itm_head(itm_head_from, self.feature_dim("multimodal"))
        self.model.requires_grad_(False)
        self.metrics = MetricCollection({})
        self.rerank_metrics: MetricCollection | None = None
        self._count = 0

    def setup(self, stage: str) -> None:
        if stage not in ("test", "predict"):
            raise ValueError("zero-shot classification runs with `flava-zoo test` or `flava-zoo predict`")
        dm = self.task_data()
        self.check_data_fits(dm)
        if "zero_shot" not in dm.family.modes:
            raise ValueError(f"zero-shot classification needs an image classification task, not {dm.task_name}")
        names = list(self.hparams.class_names or dm.label_names)
        if len(names) != dm.num_labels:
            raise ValueError(
                f"{dm.task_name} has {dm.num_labels} labels ({', '.join(dm.label_names[:10])}) but "
                f"{len(names)} class names were given"
            )
        self.class_names = names
        dm.attach_model(self.hparams.model, self.model.config.text.vocab_size)
        metrics = {"accuracy": MulticlassAccuracy(num_classes=len(names), average="micro")}
        if dm.mean_per_class:
            metrics["mean_per_class_accuracy"] = MulticlassAccuracy(num_classes=len(names), average="macro")
        self.metrics = MetricCollection(metrics)  # the embedding ranking
        self.rerank_metrics = self.metrics.clone() if self.itm_head is not None else None

    def on_test_start(self) -> None:
        dm = self.task_data()
        templates = self.hparams.templates
        self.prompts = {name: dm.prompts(name, templates) for name in self.class_names}
        self.classes = class_embeddings(
            self.model, dm.tokenizer, self.class_names, self.prompts.__getitem__, self.device
        )
        self._count = 0
        self.metrics.reset()
        if self.rerank_metrics is not None:
            self.rerank_metrics.reset()
        if self.itm_head is not None:
            flat = [p for name in self.class_names for p in self.prompts[name]]
            enc = {k: v.to(self.device) for k, v in dm.tokenizer(flat).items()}
            self._prompt_text = self.model.encode_text(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
            owner = [c for c, name in enumerate(self.class_names) for _ in self.prompts[name]]
            self._prompt_owner = torch.tensor(owner, device=self.device)

    def _match_scores(self, image: Any) -> Callable[[Tensor, Tensor], Tensor]:
        text = self._prompt_text

        def score(rows: Tensor, cols: Tensor) -> Tensor:
            out = torch.empty(len(rows), device=rows.device)
            for c in cols.unique().tolist():
                prompt_ids = (self._prompt_owner == c).nonzero().squeeze(1)
                pick = (cols == c).nonzero().squeeze(1)
                r = rows[pick].repeat_interleave(len(prompt_ids))
                t = prompt_ids.repeat(len(pick))
                fused = self.model.fuse(_index(image, r), _index(text, t))
                logits = self.itm_head(fused.cls).float()
                match = (logits[:, 1] - logits[:, 0]).reshape(len(pick), len(prompt_ids)).mean(1)
                out[pick] = match
            return out

        return score

    @torch.no_grad()
    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        image = self.model.encode_image(batch["pixel_values"])
        logits = zero_shot_logits(image.embedding, self.classes, self.model.scale())
        self.metrics.update(logits, batch["labels"])
        if self.itm_head is not None and self.rerank_metrics is not None:
            reranked = itm_rerank(logits, self.hparams.itm_rerank_k, self._match_scores(image))
            self.rerank_metrics.update(reranked, batch["labels"])
        self._count += logits.shape[0]

    def on_test_epoch_end(self) -> None:
        """Log and record accuracy in percent: the embedding ranking's under the plain names,
        the ITM re-ranked one (if any) under :data:`RERANK_PREFIX` names with its ``k``."""
        dm = self.task_data()
        total = gather_count(self, self._count)
        split = dm.test_split_names[0]
        if total == 0:
            raise ValueError(f"{dm.task_name} {split}: the test split yielded no samples")
        values = to_percent(self.metrics.compute())
        self.log_dict({f"test/{k}": v for k, v in values.items()})
        self.record(values, split, total, unit="%")
        if self.rerank_metrics is not None:
            reranked = {RERANK_PREFIX + k: v for k, v in to_percent(self.rerank_metrics.compute()).items()}
            self.log_dict({f"test/{k}": v for k, v in reranked.items()})
            self.record(reranked, split, total, hyperparameters={"itm_rerank_k": int(self.hparams.itm_rerank_k)}, unit="%")

    def on_predict_start(self) -> None:
        self.on_test_start()
        self._predictions: list[dict[str, Any]] = []

    @torch.no_grad()
    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Class scores of each image: ``prediction`` (the top class) and ``scores`` (every
        class's probability)."""
        image = self.model.encode_image(batch["pixel_values"])
        probs = zero_shot_logits(image.embedding, self.classes, self.model.scale()).float().softmax(-1).cpu()
        split = self.task_data().test_split_names[dataloader_idx]
        for ident, p in zip(batch["ids"], probs):
            self._predictions.append({
                "split": split, "id": ident, "prediction": self.class_names[int(p.argmax())],
                "scores": {n: round(float(v), 6) for n, v in zip(self.class_names, p.tolist())},
            })  # fmt: skip

    def on_predict_epoch_end(self) -> None:
        self.write_predictions(self._predictions)
        self._predictions = []


def _index(out: Any, idx: Tensor) -> Any:
    """Rows ``idx`` of an encoder output (states and mask)."""
    return type(out)(
        last_hidden_state=out.last_hidden_state[idx],
        prenorm_state=out.prenorm_state[idx],
        attention_mask=None if out.attention_mask is None else out.attention_mask[idx],
    )

