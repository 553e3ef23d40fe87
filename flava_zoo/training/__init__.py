"""Training: the pretraining LightningModule, optimiser groups and stage initialisation."""

from .module import FlavaPretrainModule

__all__ = ["FlavaPretrainModule"]
