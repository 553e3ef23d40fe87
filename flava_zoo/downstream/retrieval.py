"""Image-text retrieval: contrastive (+ optional ITM) fine-tuning, and R@K evaluation in both
directions with several captions per image (COCO / Flickr30K Karpathy splits: five), with
optional re-ranking of each query's top-k by ITM score.

``flava-zoo fit`` then ``test`` with ``recipes/finetune/shapes_retrieval.yaml`` fine-tunes
and evaluates; ``flava-zoo test --config recipes/zeroshot/shapes_retrieval.yaml`` evaluates
the pretrained embeddings zero-shot.

Recall is in percent. ``image_to_text_R@K`` / ``text_to_image_R@K`` always rank by embedding
similarity; with ``itm_rerank_k`` the re-ranked recall is recorded besides, as
``itm_rerank_image_to_text_R@K`` / ``itm_rerank_text_to_image_R@K``
(:data:`~flava_zoo.downstream.zero_shot.RERANK_PREFIX`), with ``itm_rerank_k`` in the records'
hyperparameters.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import losses
from ..evaluation.retrieval import retrieval_recall
from ..models.heads import ITMHead
from ..training.guard import DEFAULT_MAX_SKIPPED_STEPS, nonfinite_guard
from .base import DownstreamModule, layer_decay_multipliers, load_itm_head
from .zero_shot import RERANK_PREFIX, _index, itm_rerank

__all__ = ["RetrievalModule", "TOWERS"]

TOWERS = {"image": "image_encoder", "text": "text_encoder", "fusion": "fusion_encoder"}


class RetrievalModule(DownstreamModule):
    """Fine-tune and evaluate image-text retrieval.

    Args:
        model: a registered architecture, a zoo ``arch.tag`` or an exported folder.
        model_overrides: config fields to override by name.
        itm_weight: weight of the image-text matching loss next to the contrastive one
            (0: contrastive only; the fusion encoder is then frozen unless re-ranking).
        itm_hard_negatives: draw ITM negatives from the contrastive similarities (ALBEF).
        itm_rerank_k: at test time re-rank each query's top-k by ITM score (0: off).
        itm_head_from: checkpoint holding a trained ITM head (``objective.itm_head.*`` of a
            pretraining run, ``itm_head.*`` of a fine-tuning run).
        freeze: towers to freeze, from ``image``, ``text``, ``fusion``.
        ks: recall cut-offs.
        lr: peak learning rate. This, ``layer_decay`` and the next four are the optimiser
            settings (:class:`~flava_zoo.training.base.OptimizerConfig`).
        layer_decay: layer-wise learning-rate decay factor in (0, 1]; ``None`` for off.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup_steps: linear warm-up; a cosine decay follows.
        min_lr_ratio: the cosine ends at ``lr * min_lr_ratio``.
        max_skipped_steps: updates with a non-finite loss or gradient are skipped; this many
            in a row stop the run (:mod:`flava_zoo.training.guard`).
        text_batch_size: captions encoded at once during evaluation.
        results: results file; default ``results.jsonl`` in the run folder.
        seed: seed of the ITM negative sampler.
        predictions: ``flava-zoo predict``'s output: per query (each image, each caption) the
            ranked top ``predict_top_k`` of the other side with their cosine similarities;
            default ``predictions.jsonl`` in the run folder.
        predict_top_k: how many ranked results each query keeps.
    """

    def __init__(
        self,
        model: str = "flava-tiny",
        model_overrides: dict[str, Any] | None = None,
        itm_weight: float = 0.0,
        itm_hard_negatives: bool = True,
        itm_rerank_k: int = 0,
        itm_head_from: str | None = None,
        freeze: list[str] | None = None,
        ks: tuple[int, ...] = (1, 5, 10),
        lr: float = 1e-4,
        layer_decay: float | None = None,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 50,
        min_lr_ratio: float = 0.0,
        max_skipped_steps: int = DEFAULT_MAX_SKIPPED_STEPS,
        text_batch_size: int = 256,
        results: str | None = None,
        seed: int = 0,
        predictions: str | None = None,
        predict_top_k: int = 10,
    ) -> None:
        super().__init__(model, model_overrides)
        self.save_hyperparameters()
        if itm_weight < 0 or itm_rerank_k < 0:
            raise ValueError("itm_weight and itm_rerank_k must be non-negative")
        unknown = sorted(set(freeze or ()) - set(TOWERS))
        if unknown:
            raise ValueError(f"freeze: unknown tower(s) {unknown}; choose from {sorted(TOWERS)}")
        if not ks or min(ks) < 1:
            raise ValueError(f"ks must be positive recall cut-offs, got {ks}")
        self.itm_head: ITMHead | None = None
        if itm_weight > 0 or itm_rerank_k > 0 or itm_head_from:
            dim = self.feature_dim("multimodal")
            self.itm_head = load_itm_head(itm_head_from, dim) if itm_head_from else ITMHead(dim)
        if itm_rerank_k > 0 and itm_weight == 0 and not itm_head_from:
            raise ValueError(
                "itm_rerank_k needs a trained ITM head: pass itm_head_from or train one with itm_weight > 0"
            )
        self.generator = torch.Generator().manual_seed(seed)
        self._val: list[tuple[Tensor, Tensor]] = []
        self._test: list[tuple[Tensor, Tensor, Any]] = []

    def setup(self, stage: str) -> None:
        dm = self.task_data()
        self.check_data_fits(dm)
        if "retrieval" not in dm.family.modes:
            raise ValueError(f"RetrievalModule needs a retrieval task, not {dm.task_name}")
        dm.attach_model(self.hparams.model, self.model.config.text.vocab_size)
        self._frozen_modules = []
        m = self.model
        frozen = [getattr(m, TOWERS[t]) for t in self.hparams.freeze or ()]
        if self.hparams.itm_weight == 0:
            frozen += [m.fusion_encoder, self.itm_head]
        self.freeze_modules(frozen)

    # ------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        m, hp = self.model, self.hparams
        image = m.encode_image(batch["pixel_values"])
        text = m.encode_text(batch["input_ids"], batch["attention_mask"])
        contrastive = losses.contrastive_loss(image.embedding, text.embedding, m.scale())
        loss = contrastive
        b = image.embedding.shape[0]
        self.log("train/contrastive", contrastive, batch_size=b)
        if hp.itm_weight > 0 and b > 1:
            sim = (image.embedding @ text.embedding.T).detach().float().cpu()
            neg_text = losses.sample_itm_negatives(b, sim if hp.itm_hard_negatives else None, self.generator)
            neg_image = losses.sample_itm_negatives(b, sim.T if hp.itm_hard_negatives else None, self.generator)
            neg_text, neg_image = neg_text.to(self.device), neg_image.to(self.device)
            cls = torch.cat([
                m.fuse(image, text).cls,
                m.fuse(image, _index(text, neg_text)).cls,
                m.fuse(_index(image, neg_image), text).cls,
            ])
            labels = torch.cat([torch.ones(b), torch.zeros(2 * b)]).long().to(self.device)
            itm = losses.itm_loss(self.itm_head(cls), labels)
            self.log("train/itm", itm, batch_size=b)
            loss = loss + hp.itm_weight * itm
        nonfinite_guard(self).observe_loss(loss)
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        m = self.model
        img = m.encode_image(batch["pixel_values"]).embedding
        txt = m.encode_text(batch["input_ids"], batch["attention_mask"]).embedding
        self._val.append((img.float().cpu(), txt.float().cpu()))

    def on_validation_epoch_end(self) -> None:
        """Recall (percent) on the validation pairs (one caption per image), by embedding."""
        if not self._val:
            return
        img = torch.cat([v[0] for v in self._val])
        txt = torch.cat([v[1] for v in self._val])
        self._val = []
        metrics = retrieval_recall(img @ txt.T, ks=(1, 5))
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, prog_bar=True)

    # ----------------------------------------------------------------- test
    def on_test_epoch_start(self) -> None:
        self._test = []
        if self.trainer.world_size > 1 and self.hparams.itm_rerank_k:
            raise ValueError("ITM re-ranking runs in one process; test with devices=1")

    @torch.no_grad()
    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self.model.encode_image(batch["pixel_values"])
        states = None
        if self.hparams.itm_rerank_k:
            states = (out.last_hidden_state.cpu(), out.prenorm_state.cpu())
        self._test.append((batch["index"].cpu(), out.embedding.float().cpu(), states))

    @torch.no_grad()
    def on_test_epoch_end(self) -> None:
        """R@K (percent) both ways over the whole split by embedding similarity, and with ITM
        re-ranking under :data:`RERANK_PREFIX` names; log and record both."""
        dm = self.task_data()
        split = dm.test_split_names[0]
        if not self._test:
            raise ValueError(f"{dm.task_name} {split}: the test split yielded no images")
        index = torch.cat([t[0] for t in self._test])
        image_emb = torch.cat([t[1] for t in self._test])
        if self.trainer.world_size > 1:
            index = self.all_gather(index.to(self.device)).reshape(-1).cpu()
            image_emb = self.all_gather(image_emb.to(self.device)).reshape(-1, image_emb.shape[-1]).cpu()
        order = _first_occurrence(index)
        index, image_emb = index[order], image_emb[order]
        _, texts, text_to_image = dm.retrieval_split("test")
        n_images = int(text_to_image.max()) + 1
        if index.numel() != n_images or not torch.equal(index, torch.arange(n_images)):
            raise ValueError(f"{dm.task_name} {split}: expected images 0..{n_images - 1}, got {index.numel()} images")
        enc = dm.tokenizer(texts)
        text_out = self._encode_texts(enc)
        sim = image_emb @ text_out["embedding"].T
        metrics = retrieval_recall(sim, self.hparams.ks, text_to_image)  # percent
        self.log_dict({f"test/{key}": v for key, v in metrics.items()})
        self._record_both_ways(metrics, split, n_images, len(texts))
        k = self.hparams.itm_rerank_k
        if k:
            images = _Stack(torch.cat([t[2][0] for t in self._test])[order], torch.cat([t[2][1] for t in self._test])[order])
            i2t = itm_rerank(sim, k, self._match(images, text_out))
            t2i = itm_rerank(sim.T, k, lambda rows, cols: self._match(images, text_out)(cols, rows))
            reranked = {
                **{key: v for key, v in retrieval_recall(i2t, self.hparams.ks, text_to_image).items() if key.startswith("image_to_text")},
                **{key: v for key, v in retrieval_recall(t2i.T, self.hparams.ks, text_to_image).items() if key.startswith("text_to_image")},
            }
            reranked = {RERANK_PREFIX + key: v for key, v in reranked.items()}
            self.log_dict({f"test/{key}": v for key, v in reranked.items()})
            self._record_both_ways(reranked, split, n_images, len(texts), {"itm_rerank_k": int(k)})
        self._test = []

    # -------------------------------------------------------------- predict
    @classmethod
    def init_args_from_checkpoint(cls, path: str, saved: dict[str, Any]) -> dict[str, Any]:
        """As the base class; a trained ITM head is in the checkpoint itself, so re-ranking
        reads it from there."""
        args = super().init_args_from_checkpoint(path, saved)
        if args.get("itm_head_from") or args.get("itm_weight", 0) > 0:
            args["itm_head_from"] = str(path)
        return args

    def on_predict_epoch_start(self) -> None:
        self._test = []

    @torch.no_grad()
    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        out = self.model.encode_image(batch["pixel_values"])
        self._test.append((batch["index"].cpu(), out.embedding.float().cpu(), None))

    @torch.no_grad()
    def on_predict_epoch_end(self) -> None:
        """Rank every caption for each image and every image for each caption by cosine
        similarity; write the top ``predict_top_k`` of each query."""
        dm = self.task_data()
        split = dm.test_split_names[0]
        index = torch.cat([t[0] for t in self._test])
        image_emb = torch.cat([t[1] for t in self._test])
        order = _first_occurrence(index)
        index, image_emb = index[order], image_emb[order]
        _, texts, _ = dm.retrieval_split("test")
        sim = image_emb @ self._encode_texts(dm.tokenizer(texts))["embedding"].T
        rows: list[dict[str, Any]] = []
        for query, matrix, ids in (("image", sim, index.tolist()), ("text", sim.T, list(range(len(texts))))):
            k = min(self.hparams.predict_top_k, matrix.shape[1])
            top = matrix.topk(k, dim=1)
            others = index.tolist() if query == "text" else list(range(len(texts)))
            for row, ident in enumerate(ids):
                entry = {"split": split, "query": query, "id": int(ident),
                         "prediction": [int(others[j]) for j in top.indices[row].tolist()],
                         "scores": [round(float(v), 6) for v in top.values[row].tolist()]}  # fmt: skip
                if query == "text":
                    entry["text"] = texts[row]
                rows.append(entry)
        self.write_predictions(rows)
        self._test = []

    def _record_both_ways(
        self, metrics: dict[str, float], split: str, n_images: int, n_texts: int, hyperparameters: dict | None = None
    ) -> None:
        """Record image-to-text recall over its ``n_images`` queries and text-to-image recall
        over its ``n_texts`` queries (each record's ``num_samples`` is its own query count)."""
        for direction, n in (("image_to_text", n_images), ("text_to_image", n_texts)):
            part = {k: v for k, v in metrics.items() if direction in k}
            if part:
                self.record(part, split, n, hyperparameters=hyperparameters, unit="%")

    def _encode_texts(self, enc: dict[str, Tensor]) -> dict[str, Tensor]:
        m, bs = self.model, self.hparams.text_batch_size
        keep = bool(self.hparams.itm_rerank_k)
        embs, lhs, pre = [], [], []
        for start in range(0, enc["input_ids"].shape[0], bs):
            part = {key: v[start : start + bs].to(self.device) for key, v in enc.items()}
            out = m.encode_text(part["input_ids"], part["attention_mask"])
            embs.append(out.embedding.float().cpu())
            if keep:
                lhs.append(out.last_hidden_state.cpu())
                pre.append(out.prenorm_state.cpu())
        result = {"embedding": torch.cat(embs), "attention_mask": enc["attention_mask"]}
        if keep:
            result["last_hidden_state"] = torch.cat(lhs)
            result["prenorm_state"] = torch.cat(pre)
        return result

    def _match(self, images: _Stack, text: dict[str, Tensor]):
        """ITM match score (logit difference) of (image row, text column) pairs."""
        from ..models.encoders import EncoderOutput

        def score(image_idx: Tensor, text_idx: Tensor) -> Tensor:
            out = []
            for start in range(0, len(image_idx), 512):
                i = image_idx[start : start + 512].cpu()
                t = text_idx[start : start + 512].cpu()
                img = EncoderOutput(images.last[i].to(self.device), images.prenorm[i].to(self.device))
                txt = EncoderOutput(
                    text["last_hidden_state"][t].to(self.device), text["prenorm_state"][t].to(self.device),
                    text["attention_mask"][t].to(self.device),
                )
                logits = self.itm_head(self.model.fuse(img, txt).cls).float()
                out.append((logits[:, 1] - logits[:, 0]).cpu())
            return torch.cat(out)

        return score

    # ------------------------------------------------------------ optimiser
    def lr_multipliers(self) -> dict[str, float]:
        """With ``layer_decay``, one multiplier per depth of the backbone
        (:func:`~flava_zoo.downstream.base.layer_decay_multipliers`)."""
        hp = self.hparams
        return layer_decay_multipliers(self.model, hp.layer_decay, "multimodal") if hp.layer_decay else {}


class _Stack:
    def __init__(self, last: Tensor, prenorm: Tensor) -> None:
        self.last = last
        self.prenorm = prenorm


def _first_occurrence(index: Tensor) -> Tensor:
    """Positions that sort ``index`` ascending, keeping the first copy of repeated entries
    (a distributed sampler pads the last batch with repeats)."""
    seen: dict[int, int] = {}
    for pos, value in enumerate(index.tolist()):
        seen.setdefault(value, pos)
    return torch.tensor([seen[v] for v in sorted(seen)], dtype=torch.long)
