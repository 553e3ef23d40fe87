"""Initialise a stage from earlier weights: a stage checkpoint, an export, or unimodal towers."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import HEADS_NAME, WEIGHTS_NAME
from ..weights import load_state_dict_file


def _state_from(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """Read weights and say which module they belong to (``objective`` or ``model``)."""
    if path.is_dir():
        state = load_state_dict_file(path / WEIGHTS_NAME)
        if not (path / HEADS_NAME).is_file():
            return state, "model"
        # An export with its pretraining heads: backbone keys under ``model.``, heads as saved.
        return {f"model.{k}": v for k, v in state.items()} | load_state_dict_file(path / HEADS_NAME), "objective"
    if not path.is_file():
        raise FileNotFoundError(f"init_from: {path} is neither an exported folder nor a checkpoint file")
    state = load_state_dict_file(path)
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if any(k.startswith("objective.") for k in state):
        return {k.removeprefix("objective."): v for k, v in state.items() if k.startswith("objective.")}, "objective"
    return state, "model"


def load_stage_weights(objective: nn.Module, path: str | Path) -> list[str]:
    """Load an earlier stage's weights into ``objective`` (a ``FlavaForPretraining``).

    Accepts a Lightning checkpoint of :class:`FlavaPretrainModule` (backbone and heads) or
    an exported folder (backbone, and the heads its stage trained when it has
    ``heads.safetensors``). Keys present in both with equal shapes load; a key
    whose shape differs raises ``ValueError``; keys absent from the file keep their
    initialisation and are returned (and warned about).
    """
    path = Path(path)
    state, owner = _state_from(path)
    target = objective if owner == "objective" else objective.model
    own = target.state_dict()
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        k = mismatched[0]
        raise ValueError(
            f"{path}: {len(mismatched)} tensor(s) have a different shape, e.g. {k}: "
            f"{tuple(state[k].shape)} in the file vs {tuple(own[k].shape)} in the model"
        )
    loadable = {k: v for k, v in state.items() if k in own}
    if not loadable:
        raise ValueError(f"{path}: no tensor matches this model (is it a flava-zoo checkpoint?)")
    target.load_state_dict(loadable, strict=False)
    missing = sorted(set(own) - set(loadable))
    if path.is_dir():  # an export: heads its stage did not train are expected to be absent
        missing = [k.removeprefix("model.") for k in missing if owner == "model" or k.startswith("model.")]
    if missing:
        warnings.warn(f"{path}: {len(missing)} tensor(s) keep their initialisation, e.g. {missing[:3]}", stacklevel=2)
    return missing


def load_unimodal_weights(model: nn.Module, image: str | None = None, text: str | None = None) -> None:
    """Initialise towers from unimodal checkpoints.

    ``image``: a torchvision ViT state dict (``.pth`` / ``.safetensors``) into the image tower;
    ``text``: a Hugging Face BERT folder into the text tower (which must be configured
    post-LN, ``text.norm_first=False``, to hold BERT exactly).
    """
    from ..interop.unimodal import (
        load_bert_into_text_encoder,
        load_torchvision_vit_into_image_encoder,
    )

    if image:
        load_torchvision_vit_into_image_encoder(model.image_encoder, image)
    if text:
        load_bert_into_text_encoder(model.text_encoder, text)
