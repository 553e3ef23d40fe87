"""FLAVA's pretraining objective: the backbone plus its heads, one loss per term.

A batch decides what is computed. Images alone give masked image modelling (MIM); text
alone gives masked language modelling (MLM); pairs give the global contrastive loss on the
unmasked inputs and, on the masked inputs fused, masked multimodal modelling (MMM, image
and text) and image-text matching (ITM) against in-batch or hard negatives. Unimodal MIM
and MLM on pairs come for free from the masked towers when their weights are positive.
A term is computed only when its weight is positive and its inputs are in the batch.

ITM negatives come one of two ways (``itm_negatives``):

* ``swap`` (FLAVA's, and transformers' ``FlavaForPreTraining``): half of the pairs, drawn
  at random, get another sample's text; one fusion pass scores all ``B`` pairs for ITM and
  MMM is computed on the matched half only.
* ``extra``: the fusion encoder runs a second time on ``B`` negative pairs, so ITM sees
  ``2B`` pairs and MMM all ``B`` matched ones, at the cost of that second pass (a sixth of
  flava-tiny's multimodal step).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from .. import losses
from ..image_tokenizer import ImageTokenizer
from .flava import FlavaModel
from .heads import ITMHead, MaskedPredictionHead

LOSS_TERMS = ("mim", "mlm", "contrastive", "itm", "mmm_image", "mmm_text")
ITM_NEGATIVES = ("swap", "extra")


@dataclass
class LossWeights:
    """Weight of each pretraining loss term; 0 switches a term (and its compute) off."""

    mim: float = 1.0
    mlm: float = 1.0
    contrastive: float = 1.0
    itm: float = 1.0
    mmm_image: float = 1.0
    mmm_text: float = 1.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value < 0:
                raise ValueError(f"loss weight {name} must be non-negative, got {value}")


@dataclass
class PretrainingOutput:
    """The weighted total ``loss`` and detached per-term values (plus ``loss``) for logging."""

    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)


class FlavaForPretraining(nn.Module):
    """A :class:`FlavaModel` with MIM, MLM, ITM, MMM-image and MMM-text heads.

    ``image_tokenizer`` is required when ``model.config.mim_target == "codebook"`` and
    unused otherwise; nothing is downloaded. ``itm_hard_negatives`` draws each image's
    negative text from the softmax of its contrastive similarities instead of uniformly;
    ``itm_negatives`` is ``swap`` (FLAVA's: half the pairs mismatched, one fusion pass) or
    ``extra`` (a second fusion pass over ``B`` negatives; see the module docstring).
    """

    def __init__(
        self,
        model: FlavaModel,
        weights: LossWeights | Mapping[str, float] | None = None,
        itm_hard_negatives: bool = False,
        image_tokenizer: ImageTokenizer | None = None,
        seed: int = 0,
        itm_negatives: str = "swap",
    ) -> None:
        super().__init__()
        if itm_negatives not in ITM_NEGATIVES:
            raise ValueError(f"itm_negatives must be one of {ITM_NEGATIVES}, got {itm_negatives!r}")
        self.itm_negatives = itm_negatives
        self.model = model
        cfg = model.config
        if isinstance(weights, Mapping):
            unknown = sorted(set(weights) - set(LOSS_TERMS))
            if unknown:
                raise ValueError(f"unknown loss weight(s) {unknown}; valid: {list(LOSS_TERMS)}")
            weights = LossWeights(**weights)
        self.weights = weights or LossWeights()
        self.itm_hard_negatives = itm_hard_negatives
        if cfg.mim_target == "codebook":
            if image_tokenizer is None:
                raise ValueError('mim_target="codebook" needs an image_tokenizer (e.g. a DalleImageTokenizer)')
            if image_tokenizer.vocab_size != cfg.codebook_size:
                raise ValueError(
                    f"image tokenizer has {image_tokenizer.vocab_size} codes but codebook_size is {cfg.codebook_size}"
                )
            image_out = cfg.codebook_size
        else:
            image_out = cfg.image.patch_size**2 * cfg.image.num_channels
        self.image_tokenizer = image_tokenizer
        head_eps = cfg.head_layer_norm_eps
        self.mim_head = MaskedPredictionHead(cfg.image.hidden_size, image_out, head_eps or cfg.image.layer_norm_eps)
        self.mlm_head = MaskedPredictionHead(cfg.text.hidden_size, cfg.text.vocab_size, head_eps or cfg.text.layer_norm_eps)
        if model.fusion_encoder is not None:
            d, eps = cfg.multimodal.hidden_size, head_eps or cfg.multimodal.layer_norm_eps
            self.itm_head = ITMHead(d)
            self.mmm_image_head = MaskedPredictionHead(d, image_out, eps)
            self.mmm_text_head = MaskedPredictionHead(d, cfg.text.vocab_size, eps)
        else:
            self.itm_head = self.mmm_image_head = self.mmm_text_head = None
        self.generator = torch.Generator().manual_seed(seed)

    def _image_targets(self, pixel_values: Tensor) -> Tensor:
        """MIM targets of every patch: normalised pixels ``(B, N, p*p*C)`` or codes ``(B, N)``."""
        cfg = self.model.config.image
        if self.image_tokenizer is not None:
            grid = (pixel_values.shape[-2] // cfg.patch_size, pixel_values.shape[-1] // cfg.patch_size)
            return self.image_tokenizer.tokenize(pixel_values, grid)
        return losses.normalized_pixel_targets(pixel_values, cfg.patch_size)

    def _image_loss(self, head: nn.Module, states: Tensor, targets: Tensor) -> Tensor:
        pred = head(states)
        if self.image_tokenizer is not None:
            return losses.masked_prediction_loss(pred, targets)
        return losses.pixel_regression_loss(pred, targets.to(pred.dtype))

    def forward(self, batch: Mapping[str, Tensor], fused: bool = True) -> PretrainingOutput:
        """Compute every active loss term for ``batch``.

        Keys: ``pixel_values`` and ``image_mask`` (``(B, N)`` bool) for images;
        ``input_ids``, ``attention_mask``, and ``masked_input_ids`` with ``mlm_labels``
        (-100 where not masked) for text. Pairs carry both. ``fused=False`` leaves out the
        terms of the fusion encoder (ITM, MMM) and the masked tower passes they need, for
        a step that trains only the contrastive (and any unimodal) terms.
        """
        w = asdict(self.weights)
        if not fused:
            w |= {"itm": 0.0, "mmm_image": 0.0, "mmm_text": 0.0}
        terms: dict[str, Tensor] = {}
        pixels = batch.get("pixel_values")
        ids = batch.get("input_ids")
        image_mask = batch.get("image_mask")
        text_mask = batch.get("attention_mask")
        masked_ids = batch.get("masked_input_ids")
        labels = batch.get("mlm_labels")
        if pixels is None and ids is None and masked_ids is None:
            raise ValueError("batch has neither pixel_values nor input_ids / masked_input_ids")
        paired = pixels is not None and (ids is not None or masked_ids is not None)
        model = self.model

        image_targets = None
        if pixels is not None and image_mask is not None:
            image_mask = image_mask.bool()
            needs = w["mim"] > 0 or (paired and w["mmm_image"] > 0 and model.fusion_encoder is not None)
            if needs:
                image_targets = self._image_targets(pixels)
        text_selected = labels.ne(-100) if labels is not None else None

        if paired and w["contrastive"] > 0 and ids is not None:
            image = model.encode_image(pixels)
            text = model.encode_text(ids, text_mask)
            terms["contrastive"] = losses.contrastive_loss(image.embedding, text.embedding, model.scale())
            similarity = (image.embedding @ text.embedding.T).detach()
        else:
            similarity = None

        fused_terms = paired and model.fusion_encoder is not None and (
            w["itm"] > 0 or w["mmm_image"] > 0 or w["mmm_text"] > 0
        )
        image_m = text_m = None
        if pixels is not None and (w["mim"] > 0 and image_mask is not None or fused_terms):
            image_m = model.encode_image(pixels, image_mask)
        text_in = masked_ids if masked_ids is not None else ids
        if text_in is not None and (w["mlm"] > 0 and text_selected is not None or fused_terms):
            text_m = model.encode_text(text_in, text_mask)

        if image_m is not None and image_mask is not None and w["mim"] > 0:
            states = image_m.last_hidden_state[:, 1:][image_mask]
            terms["mim"] = self._image_loss(self.mim_head, states, image_targets[image_mask])
        if text_m is not None and text_selected is not None and w["mlm"] > 0:
            logits = self.mlm_head(text_m.last_hidden_state[text_selected])
            terms["mlm"] = losses.masked_prediction_loss(logits, labels[text_selected])

        if fused_terms:
            b = pixels.shape[0]
            itm = w["itm"] > 0 and b > 1
            negatives = None
            if itm:
                sim = similarity if self.itm_hard_negatives else None
                negatives = losses.sample_itm_negatives(
                    b, None if sim is None else sim.cpu(), self.generator
                ).to(pixels.device)
            # rows whose pair is matched: all of them, unless half are swapped for negatives
            matched = torch.ones(b, dtype=torch.bool, device=pixels.device)
            text_f = text_m
            if itm and self.itm_negatives == "swap":
                swapped = torch.randperm(b, generator=self.generator)[: b // 2].to(pixels.device)
                matched[swapped] = False
                text_f = _select_text(text_m, torch.where(matched, torch.arange(b, device=pixels.device), negatives))
            fused = model.fuse(image_m, text_f)
            if image_mask is not None and w["mmm_image"] > 0:
                keep = image_mask & matched[:, None]
                states = fused.image_states[:, 1:][keep]
                terms["mmm_image"] = self._image_loss(self.mmm_image_head, states, image_targets[keep])
            if text_selected is not None and w["mmm_text"] > 0:
                keep = text_selected & matched[:, None]
                logits = self.mmm_text_head(fused.text_states[keep])
                terms["mmm_text"] = losses.masked_prediction_loss(logits, labels[keep])
            if itm and self.itm_negatives == "swap":
                terms["itm"] = losses.itm_loss(self.itm_head(fused.cls), matched.long())
            elif itm:
                negative = model.fuse(image_m, _select_text(text_m, negatives))
                logits = self.itm_head(torch.cat([fused.cls, negative.cls]))
                itm_labels = torch.cat([torch.ones(b), torch.zeros(b)]).long().to(logits.device)
                terms["itm"] = losses.itm_loss(logits, itm_labels)
        if not terms:
            raise ValueError(
                f"no loss term is active for this batch (keys {sorted(batch)}, weights {w})"
            )
        total, logs = losses.combine_losses(terms, w)
        return PretrainingOutput(loss=total, terms=logs)


def _select_text(text, rows: Tensor):
    """The text tower output ``text`` with its rows reordered by ``rows`` (for ITM negatives)."""
    return type(text)(
        last_hidden_state=text.last_hidden_state[rows],
        prenorm_state=text.prenorm_state[rows],
        attention_mask=None if text.attention_mask is None else text.attention_mask[rows],
    )
