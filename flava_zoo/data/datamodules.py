"""LightningDataModules for pretraining on the built-in shapes world."""

from __future__ import annotations

from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset

from ..tokenizer import FlavaTokenizer
from ..transforms import image_transform
from .collate import pretrain_collator
from .noise import KeptPairs, NoisyCaptions, read_kept_indices
from .resume import resumable_loader
from .shapes import ShapesImages, ShapesPairs, ShapesTexts, ShapesWorld

STAGES = ("image", "text", "multimodal")


def _reads(datamodule: Any) -> tuple[bool, bool]:
    """``(text, images)``: whether ``datamodule`` feeds the model text and images."""
    hparams = getattr(datamodule, "hparams", {}) or {}
    inputs = getattr(datamodule, "inputs", None)  # downstream TaskData
    if isinstance(inputs, str):
        return inputs != "image", inputs != "text"
    if hparams.get("stage") in STAGES:  # ShapesPretrainData
        return hparams["stage"] != "image", hparams["stage"] != "text"
    specs = getattr(datamodule, "sources", None)  # MultiSourceDataModule
    if isinstance(specs, list) and all(isinstance(s, dict) and "kind" in s for s in specs):
        kinds = {s["kind"] for s in specs + list(getattr(datamodule, "val_sources", []) or [])}
        return bool(kinds - {"images"}), bool(kinds - {"text"})
    return getattr(datamodule, "tokenizer", None) is not None, "image_size" in hparams


def check_data_fits_model(datamodule: Any, config: Any, model: str = "the model") -> None:
    """Refuse, before the first step, data that model ``model`` (config ``config``, a
    :class:`~flava_zoo.config.FlavaConfig`) cannot take, naming both numbers and the field to
    change: a text ``max_length`` above ``text.max_position_embeddings`` (the first longer
    caption would crash training), an ``image_size`` that is not a multiple of
    ``image.patch_size`` (any multiple works: position embeddings interpolate), and an image
    masker ``patch_size`` other than the model's. Only what the data module feeds is checked
    (a text-only module has no images); settings it lacks are left alone."""
    hparams = getattr(datamodule, "hparams", {}) or {}
    text, images = _reads(datamodule)
    name = type(datamodule).__name__
    max_length = hparams.get("max_length")
    positions = config.text.max_position_embeddings
    if text and max_length is not None and int(max_length) > positions:
        raise ValueError(
            f"{name} max_length {max_length} exceeds the text.max_position_embeddings {positions} "
            f"of {model}: the first text longer than {positions} tokens would crash training; set "
            f"the data's max_length (--data.init_args.max_length) to at most {positions}, or use "
            "a model with more text positions"
        )
    if not images:
        return
    patch = config.image.patch_size
    image_size = hparams.get("image_size")
    if image_size is not None and int(image_size) % patch:
        fit = max(patch, int(image_size) // patch * patch)
        raise ValueError(
            f"{name} image_size {image_size} is not a multiple of the image.patch_size {patch} "
            f"of {model}: set the data's image_size (--data.init_args.image_size) to a multiple "
            f"of {patch}, e.g. {fit}"
        )
    masker_patch = hparams.get("patch_size")
    if masker_patch is not None and int(masker_patch) != patch:
        raise ValueError(
            f"{name} patch_size {masker_patch} differs from the image.patch_size {patch} of "
            f"{model}: the image masks would not match the model's patches; set the data's "
            f"patch_size (--data.init_args.patch_size) to {patch}"
        )


def shapes_tokenizer(
    world: ShapesWorld, vocab_size: int = 1024, max_length: int = 48, max_scenes: int = 4000
) -> FlavaTokenizer:
    """A WordPiece vocabulary trained on the captions and task texts of the shapes world's
    first ``max_scenes`` training scenes (deterministic). The world's language is small:
    4,000 scenes hold every word of :meth:`ShapesWorld.vocabulary` many times over, and
    training on them takes a fifth of the time that all 20,000 take."""
    corpus = world.corpus("train", include_tasks=True, max_scenes=max_scenes)
    return FlavaTokenizer.train(corpus, vocab_size=vocab_size, max_length=max_length)


class ShapesPretrainData(L.LightningDataModule):
    """Shapes-world data for one pretraining stage.

    ``stage="image"`` yields images (for MIM), ``"text"`` captions (for MLM),
    ``"multimodal"`` image-caption pairs. Images are not augmented: crops and flips would
    make captions about positions false. ``image_size`` and ``patch_size`` must match the
    model's image tower (the image masker works on its patch grid). The tokenizer is read
    from ``tokenizer`` (a folder with ``vocab.txt``) or trained on the world's captions.

    Args:
        stage: ``image``, ``text`` or ``multimodal``.
        seed: the world's seed.
        image_size: rendered image side in pixels.
        patch_size: the model's patch size.
        train_size: training scenes (the world's ``train`` split size).
        val_size: validation scenes.
        batch_size: samples per batch.
        num_workers: data-loader worker processes.
        vocab_size: size of a trained vocabulary.
        max_length: text length cap in tokens.
        tokenizer: folder of an existing tokenizer, instead of training one.
        mlm_probability: fraction of text tokens selected for MLM / MMM-text.
        mask_ratio: fraction of image patches masked for MIM / MMM-image.
        captions: ``random`` draws one of each scene's captions per access; ``1`` always
            uses its primary caption.
        mask_seed: seed of the maskers' generators.
        caption_noise: share of the training pairs (multimodal stage) whose caption is another
            scene's (:class:`~flava_zoo.data.noise.NoisyCaptions`): weak pairs, as web data has.
        noise_seed: which pairs are weak.
        keep: a ``flava-zoo filter --shapes`` output: train on the scene indices it kept.
    """

    def __init__(
        self,
        stage: str = "multimodal",
        seed: int = 0,
        image_size: int = 64,
        patch_size: int = 16,
        train_size: int = 20_000,
        val_size: int = 2_000,
        batch_size: int = 64,
        num_workers: int = 0,
        vocab_size: int = 1024,
        max_length: int = 48,
        tokenizer: str | None = None,
        mlm_probability: float = 0.15,
        mask_ratio: float = 0.4,
        captions: str = "random",
        mask_seed: int = 0,
        caption_noise: float = 0.0,
        noise_seed: int = 0,
        keep: str | None = None,
    ) -> None:
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if image_size % patch_size:
            raise ValueError(f"image size {image_size} is not divisible by patch size {patch_size}")
        if not 0.0 <= caption_noise <= 1.0:
            raise ValueError(f"caption_noise must be in [0, 1], got {caption_noise}")
        self.save_hyperparameters()
        self.world = ShapesWorld(
            seed=seed, image_size=image_size, sizes={"train": train_size, "val": val_size}
        )
        if stage == "image":
            self.tokenizer = None
        elif tokenizer:
            self.tokenizer = FlavaTokenizer.from_pretrained(tokenizer)
        else:
            self.tokenizer = shapes_tokenizer(self.world, vocab_size, max_length)
        self.collate = pretrain_collator(
            self.tokenizer,
            image_size if stage != "text" else None,
            patch_size,
            max_length,
            mlm_probability,
            mask_ratio,
            mask_seed,
        )

    def dataset(self, split: str) -> Dataset:
        """The dataset of ``split`` for this stage."""
        transform = image_transform(self.hparams.image_size, train=False)
        if self.hparams.stage == "image":
            return ShapesImages(self.world, split, transform=transform)
        if self.hparams.stage == "text":
            return ShapesTexts(self.world, split)
        captions = self.hparams.captions if split == "train" else 1
        if captions not in ("random", 1, "1"):
            raise ValueError(f"captions must be 'random' or 1, got {captions!r}")
        pairs: Dataset = ShapesPairs(
            self.world,
            split,
            transform=transform,
            captions_per_image="random" if captions == "random" else 1,
        )
        if split != "train":
            return pairs
        hp = self.hparams
        if hp.caption_noise:
            world = self.world
            pairs = NoisyCaptions(pairs, hp.caption_noise, hp.noise_seed, text_of=lambda j: world.caption("train", j))
        if hp.keep:
            kept = read_kept_indices(
                hp.keep, self.world.split_size("train"),
                caption_noise=hp.caption_noise, noise_seed=hp.noise_seed, world_seed=hp.seed,
            )
            pairs = KeptPairs(pairs, kept)
        return pairs

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        # resumable: order, random captions and masks follow (seed, epoch, batch), and
        # --ckpt_path last continues mid-epoch where the run stopped (data/resume.py)
        return resumable_loader(
            self.dataset(split),
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            num_workers=self.hparams.num_workers,
            collate_fn=self.collate,
            drop_last=shuffle,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (the last incomplete batch is dropped)."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in order."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches in order."""
        return self._loader("test", shuffle=False)
