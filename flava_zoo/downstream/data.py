"""Downstream task data: one LightningDataModule for every task family, shapes world or official files.

A task *family* fixes what the model reads and how it is scored; a *source* says where the
samples come from: the built-in shapes world, or an official distribution read by
:mod:`flava_zoo.data.tasks`. Both are declared once, in :mod:`flava_zoo.tasks` (a
:class:`~flava_zoo.tasks.TaskSpec` per family, a :class:`~flava_zoo.tasks.Source` per
source); :class:`TaskData` looks them up.

==================== ================================ ===============================================
family               shapes-world counterpart         official sources
==================== ================================ ===============================================
image_classification ``ShapesClassification``         ``cifar10``, ``cifar100``, ``image_folder``
text_classification  ``ShapesCaptionEntailment``      ``glue`` (the nine tasks, ``glue_task=``)
vqa                  ``ShapesVQA``                    ``vqav2``
visual_entailment    ``ShapesEntailment``             ``snli_ve``
memes                ``ShapesMemes``                  ``hateful_memes``
retrieval            ``ShapesPairs``                  ``karpathy`` (COCO / Flickr30K)
==================== ================================ ===============================================

``source="official"`` picks the family's one official source (all but image classification).
An official split is described by the keyword arguments of its dataset class, so pointing a
recipe at the real files means changing paths only::

    data:
      class_path: flava_zoo.downstream.TaskData
      init_args:
        task: visual_entailment
        source: snli_ve
        train: {jsonl: data/snli_ve/snli_ve_train.jsonl, image_dir: data/flickr30k/images}
        val: {jsonl: data/snli_ve/snli_ve_dev.jsonl, image_dir: data/flickr30k/images}
        test: {jsonl: data/snli_ve/snli_ve_test.jsonl, image_dir: data/flickr30k/images}

Every sample is brought to one set of keys (``image``, ``text``, ``text_pair``, ``label``,
``target``, ``answers``, ``index``) whatever its dataset calls them, and :class:`TaskCollator`
turns a list of them into a batch. A split with no samples, or a labelled split whose samples
carry no label, is an error: nothing silently trains or evaluates on nothing.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..data.shapes import CAPTIONS_PER_SCENE, ShapesWorld
from ..tasks import GLUE_TASKS, TASKS, Source, TaskSpec, get_task, resolve
from ..tasks.retrieval import IMAGES_KEYS
from ..tokenizer import FlavaTokenizer
from ..transforms import image_transform

__all__ = ["FAMILIES", "OFFICIAL_SOURCES", "TaskCollator", "TaskData", "TaskFamily"]


TaskFamily = TaskSpec
"""A task family (the name this module gave :class:`~flava_zoo.tasks.TaskSpec`)."""

FAMILIES: dict[str, TaskSpec] = TASKS
"""Every task family by name (:data:`flava_zoo.tasks.TASKS`)."""

OFFICIAL_SOURCES: dict[str, Callable[..., Dataset]] = {
    source.name: resolve(source.reader) for spec in TASKS.values() for source in spec.official
}
"""Official source -> the dataset class whose keyword arguments describe one split."""

SPLITS = ("train", "val", "test")
_TOKENIZER_SCENES = 1000
"""Training scenes the fallback shapes tokenizer learns from (its vocabulary is complete well
before that), whatever the task's ``train_size``."""


def _test_split_name(source: Source, spec: dict[str, Any]) -> str | None:
    """What an official test split evaluates, from its dict: its ``name`` or ``split`` key,
    else its files as the source names them (:attr:`~flava_zoo.tasks.Source.test_split_name`:
    VQAv2 the split in the questions file's name, Hateful Memes and SNLI-VE the jsonl file's
    stem, CIFAR ``test`` or ``train``, an image folder its folder's name); ``None`` if unknown."""
    for key in ("name", "split"):
        value = spec.get(key)
        if isinstance(value, str) and value:
            return value
    return source.test_split_name(spec) if source.test_split_name is not None else None


class _View(Dataset):
    """A dataset whose samples pass through ``fn`` (to the common keys)."""

    def __init__(self, dataset: Dataset, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.dataset = dataset
        self.fn = fn

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.fn(self.dataset[index])


class _Normalise:
    """Bring one sample to the common keys, as its source names them (a class, not a lambda:
    data-loader workers pickle it)."""

    def __init__(
        self,
        keys: dict[str, str],
        derive: Callable[[dict[str, Any], dict[str, Any], int], None] | None = None,
        num_labels: int = 0,
    ) -> None:
        self.keys = dict(keys)
        self.derive = derive
        self.num_labels = num_labels

    def __call__(self, s: dict[str, Any]) -> dict[str, Any]:
        out = {common: s.get(key, 0) if common == "index" else s[key] for common, key in self.keys.items()}
        if self.derive is not None:
            self.derive(s, out, self.num_labels)
        # the id a prediction file names the sample by: the official one where the source has it
        out["id"] = s.get("question_id", s.get("id", s["index"]))
        return out


class _Subset(Dataset):
    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[self.indices[index]]

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "indices"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


class TaskCollator:
    """Collate common-key samples into a batch.

    Output keys, each present when the samples carry it: ``pixel_values`` ``(B, 3, H, W)``;
    ``input_ids``, ``attention_mask``, ``token_type_ids`` (a ``text_pair`` makes a sentence
    pair); ``labels`` (long, or float for a regression); ``targets`` (VQA soft scores);
    ``answers`` (VQA human answers, a list); ``index`` (long); ``ids`` (the ids prediction
    files name samples by: the official id where the source has one). A sample without a label in a
    split that needs labels raises ``ValueError`` naming the split and the sample.
    """

    def __init__(
        self,
        tokenizer: FlavaTokenizer | None,
        max_length: int | None = None,
        regression: bool = False,
        need_labels: bool = True,
        split: str = "",
    ) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.regression = regression
        self.need_labels = need_labels
        self.split = split

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not samples:
            raise ValueError("cannot collate an empty batch")
        first = samples[0]
        batch: dict[str, Any] = {}
        if "image" in first:
            images = [s["image"] for s in samples]
            if not all(isinstance(im, Tensor) for im in images):
                raise TypeError("images must be tensors at collate time: give the dataset a transform")
            batch["pixel_values"] = torch.stack(images)
        if "text" in first:
            if self.tokenizer is None:
                raise ValueError("samples carry text but the collator has no tokenizer")
            pairs = [s["text_pair"] for s in samples] if first.get("text_pair") is not None else None
            enc = self.tokenizer([s["text"] for s in samples], pairs, max_length=self.max_length)
            batch.update(enc)
        if "label" in first and self.need_labels:
            for s in samples:
                if s["label"] is None:
                    raise ValueError(
                        f"sample {s.get('index')} of the {self.split or 'current'} split has no "
                        "label (official test files carry none): evaluate on a labelled split"
                    )
            dtype = torch.float32 if self.regression else torch.long
            batch["labels"] = torch.as_tensor([s["label"] for s in samples], dtype=dtype)
        if "target" in first and self.need_labels:
            if any(s["target"] is None for s in samples):
                raise ValueError(
                    f"a VQA question of the {self.split or 'current'} split has no annotation: "
                    "give annotations_json for every split you train or evaluate on"
                )
            batch["targets"] = torch.stack([torch.as_tensor(s["target"], dtype=torch.float32) for s in samples])
        if "answers" in first:
            batch["answers"] = [s["answers"] for s in samples]
        if "index" in first:
            batch["index"] = torch.as_tensor([int(s["index"]) for s in samples], dtype=torch.long)
        if "id" in first:
            batch["ids"] = [s["id"] for s in samples]
        return batch


class TaskData(L.LightningDataModule):
    """Data for one downstream task (see the module docstring for families and sources).

    Args:
        task: the family: ``image_classification``, ``text_classification``, ``vqa``,
            ``visual_entailment``, ``memes`` or ``retrieval``.
        source: ``shapes`` (the built-in world), an official source (``cifar10``,
            ``cifar100``, ``image_folder``, ``glue``, ``vqav2``, ``snli_ve``,
            ``hateful_memes``, ``karpathy``) or ``official`` (the family's one source).
        train: official data: keyword arguments of the source's dataset class for the
            training split (its paths), e.g. ``{jsonl: ..., image_dir: ...}`` for SNLI-VE.
        val: the same for the validation split; without it, ``val_from_train`` of the
            training split is held out (seeded), or there is no validation.
        test: the same for the test split; a list gives several test splits (MNLI matched
            and mismatched).
        val_from_train: fraction of the official training split held out for validation
            when ``val`` is not given (the linear probe chooses its L2 on it).
        glue_task: ``text_classification`` on GLUE: ``cola``, ``sst2``, ``mrpc``, ``qqp``,
            ``stsb``, ``mnli``, ``qnli``, ``rte`` or ``wnli``. Splits default to ``train``,
            ``dev`` (MNLI ``dev_matched``) and ``dev`` (MNLI both dev sets): GLUE's test
            files carry no labels.
        answer_vocab: VQA: a file with the answer vocabulary (one answer a line, or a JSON
            list); default: built from the training annotations.
        seed: shapes world seed.
        image_size: image side in pixels (the shapes world renders at this size).
        train_size: shapes scenes in the training split.
        val_size: shapes scenes in the validation split.
        test_size: shapes scenes in the test split.
        test_split: shapes split to test on: ``test`` or ``test_novel`` (held-out
            colour-shape combinations).
        target: shapes image classification: classify the ``shape`` or the ``colour``.
        mean_per_class: also report mean per-class accuracy (image classification);
            default: yes for ``shapes`` and ``image_folder``, no for CIFAR.
        tokenizer: a tokenizer folder (``vocab.txt``). The model's export folder's own
            ``vocab.txt`` wins when there is one; shapes data falls back to a vocabulary
            trained on the world's captions.
        max_length: text length cap in tokens.
        batch_size: training batch size.
        eval_batch_size: evaluation batch size (default: ``batch_size``).
        num_workers: data-loader worker processes.
        train_augment: random resized crops for training images (off for shapes: captions
            about positions would turn false).
        retrieval_captions: shapes retrieval: ``all`` (the five captions of each scene, as
            COCO's five per image) or ``primary`` (one a scene, the caption that names every
            object with its size, colour and shape: the pairs pretraining reads). The count
            and negation captions are true of many scenes, so text-to-image R@1 over ``all``
            has a ceiling far below 100; over ``primary`` nearly every caption fits one scene.
    """

    def __init__(
        self,
        task: str,
        source: str = "shapes",
        train: dict[str, Any] | None = None,
        val: dict[str, Any] | None = None,
        test: dict[str, Any] | list[dict[str, Any]] | None = None,
        val_from_train: float = 0.0,
        glue_task: str | None = None,
        answer_vocab: str | None = None,
        seed: int = 0,
        image_size: int = 64,
        train_size: int = 2000,
        val_size: int = 500,
        test_size: int = 500,
        test_split: str = "test",
        target: str = "shape",
        mean_per_class: bool | None = None,
        tokenizer: str | None = None,
        max_length: int = 48,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        train_augment: bool = False,
        retrieval_captions: str = "all",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if retrieval_captions not in ("all", "primary"):
            raise ValueError(f"retrieval_captions must be 'all' or 'primary', got {retrieval_captions!r}")
        self.family = get_task(task)
        if source == "official":
            if len(self.family.sources) != 1:
                raise ValueError(
                    f"{task} has several official sources {list(self.family.sources)}: name one as source"
                )
            source = self.family.sources[0]
        self._source = self.family.source(source)
        self.source = source
        if "glue_task" in self._source.options.values():
            if glue_task not in GLUE_TASKS:
                raise ValueError(f"glue_task must be one of {sorted(GLUE_TASKS)}, got {glue_task!r}")
        elif glue_task is not None:
            raise ValueError(f"glue_task is for source 'glue', not {source!r}")
        if source != "shapes" and retrieval_captions != "all":
            raise ValueError(f"retrieval_captions={retrieval_captions!r} is for the shapes world; {source} has its own captions")
        if source == "shapes":
            if test_split not in ("test", "test_novel"):
                raise ValueError(f"test_split must be 'test' or 'test_novel', got {test_split!r}")
            if target not in ("shape", "colour"):
                raise ValueError(f"target must be 'shape' or 'colour', got {target!r}")
            for name, size in (("train_size", train_size), ("val_size", val_size), ("test_size", test_size)):
                if size < 0:
                    raise ValueError(f"{name} must be non-negative, got {size}")
            self.world = ShapesWorld(
                seed=seed,
                image_size=image_size,
                sizes={"train": train_size, "val": val_size, "test": test_size, "test_novel": test_size},
            )
        else:
            if not 0.0 <= val_from_train < 1.0:
                raise ValueError(f"val_from_train must be in [0, 1), got {val_from_train}")
            self.world = None
        self._tokenizer: FlavaTokenizer | None = None
        self._tokenizer_origin = ""
        self._model_folder: Path | None = None
        self._zoo_name: str | None = None
        self._datasets: dict[str, Dataset] = {}
        self._raw: dict[str, Dataset] = {}
        self._answer_vocab: list[str] | None = None

    # ------------------------------------------------------------------- description
    @property
    def task_name(self) -> str:
        """Name of the task in results records: ``shapes/vqa``, ``glue/mrpc``, ``vqav2``, ..."""
        if self._source.task_name is not None:
            return self._source.task_name(self.task_options)
        return f"shapes/{self.family.name}" if self.source == "shapes" else self.source

    @property
    def task_options(self) -> dict[str, Any]:
        """The options the task's spec reads (:mod:`flava_zoo.tasks`): ``source``,
        ``glue_task``, ``target``, ``mean_per_class``."""
        hp = self.hparams
        return {"source": self.source, "glue_task": hp.glue_task, "target": hp.target,
                "mean_per_class": self.mean_per_class}  # fmt: skip

    @property
    def is_retrieval(self) -> bool:
        """Whether the family is scored by ranking embeddings (no head, no labels)."""
        return "retrieval" in self.family.modes

    @property
    def inputs(self) -> str:
        """What the model reads: ``image``, ``text`` or ``multimodal``."""
        return self.family.inputs

    @property
    def is_regression(self) -> bool:
        """True for a one-output regression head (GLUE STS-B)."""
        return self.family.regression(self.task_options)

    @property
    def label_names(self) -> list[str]:
        """Class names, answer vocabulary, or ``[]`` for a regression or retrieval, as the
        source declares them (:attr:`~flava_zoo.tasks.Source.labels`)."""
        src = self._source
        if src.answer_vocab:
            return list(self.answer_vocab())
        labels = src.labels
        if callable(labels):
            return list(labels(self.task_options))
        if isinstance(labels, str):
            value = getattr(self._shapes_dataset("train") if self.source == "shapes" else self._train_or_test(), labels)
            return list(value() if callable(value) else value)
        if labels is not None:
            return list(labels)
        return list(self._train_or_test().label_names)  # type: ignore[attr-defined]

    def _train_or_test(self) -> Dataset:
        split = "train" if self.hparams.train is not None else self.test_split_names[0]
        return self._raw_dataset(split)

    @property
    def num_labels(self) -> int:
        """Outputs a task head needs: the number of classes, 1 for a regression."""
        return 1 if self.is_regression else len(self.label_names)

    @property
    def mean_per_class(self) -> bool:
        """Whether mean per-class accuracy is reported for image classification."""
        if self.hparams.mean_per_class is not None:
            return bool(self.hparams.mean_per_class)
        return self._source.mean_per_class

    def prompts(self, class_name: str, templates: Sequence[str] | None = None) -> list[str]:
        """Zero-shot prompts for ``class_name``: ``templates`` (``{}`` marks the name) or the
        task's own (the shapes world's, or the family's :attr:`~flava_zoo.tasks.TaskSpec.prompt`,
        ``"a photo of a {}."``)."""
        if templates:
            return [t.format(class_name) for t in templates]
        if self.source == "shapes" and self._source.prompts:
            return getattr(self._shapes_dataset("train"), self._source.prompts)(class_name)
        return [self.family.prompt.format(class_name)]

    def fingerprint(self, split: str) -> dict[str, Any]:
        """What identifies the samples of ``split`` (cache keys): source, options, paths with
        their sizes and modification times, split sizes."""
        hp = self.hparams
        out: dict[str, Any] = {"task": self.task_name, "source": self.source, "split": split,
                               "image_size": hp.image_size}
        if self.source == "shapes":
            out.update(seed=hp.seed, size=len(self.dataset(split)), target=hp.target,
                       world_split=self._shapes_split(split))
        else:
            derived = self._derived_from_train(split)
            out["spec"] = _describe(self._split_spec("train" if derived else split))
            out["val_from_train"] = hp.val_from_train if derived else 0.0
            out["size"] = len(self.dataset(split))
        return out

    # -------------------------------------------------------------------- tokenizer
    def transform_settings(self) -> dict[str, Any]:
        """The image pipeline's settings (stored in fine-tuning checkpoints)."""
        from ..transforms import FLAVA_MEAN, FLAVA_STD

        return {"image_size": int(self.hparams.image_size), "mean": list(FLAVA_MEAN), "std": list(FLAVA_STD)}

    def attach_model(self, model: Any, vocab_size: int | None = None) -> None:
        """Tell the data which model it feeds (any name :func:`flava_zoo.create_model` takes,
        or its :class:`~flava_zoo.factory.ModelSource`): an exported folder's ``vocab.txt`` or
        a zoo entry's vocabulary becomes the tokenizer; a flava-zoo checkpoint (``.ckpt``)
        brings its own tokenizer and image size. With ``vocab_size`` (the model's text
        vocabulary), raises when the tokenizer has more tokens than the model's embedding table."""
        from ..factory import load_tokenizer, resolve_model

        source = resolve_model(model)
        where = source.tokenizer or {}
        self._tokenizer = None
        self._model_folder = Path(where["folder"]) if "folder" in where else None
        self._zoo_name = where.get("zoo")
        if source.kind == "checkpoint":
            if "stored" in where:
                self._tokenizer = load_tokenizer(source)
                self._tokenizer_origin = source.tokenizer_origin
            size = source.transform.get("image_size")
            if size is not None and int(size) != int(self.hparams.image_size):
                raise ValueError(
                    f"checkpoint {source.name} was trained on {size} px images but the data gives "
                    f"{self.hparams.image_size} px: set data image_size to {size}"
                )
        if vocab_size is not None:
            tok = self.tokenizer
            if tok is not None and tok.vocab_size > vocab_size:
                raise ValueError(
                    f"tokenizer ({self._tokenizer_origin}) has {tok.vocab_size} tokens but the "
                    f"model's text embedding has vocab_size {vocab_size}: use the model's own "
                    "vocabulary or a model with a larger vocab_size"
                )

    @property
    def tokenizer_origin(self) -> str:
        """Where the tokenizer came from (resolving it if needed)."""
        tok = self.tokenizer
        return f"{self._tokenizer_origin} ({tok.vocab_size if tok is not None else 0} tokens)"

    @property
    def needs_tokenizer(self) -> bool:
        return self.family.inputs != "image"

    @property
    def tokenizer(self) -> FlavaTokenizer | None:
        """The tokenizer: the model folder's ``vocab.txt``, else ``tokenizer``, else the zoo
        model's vocabulary, else (shapes) a vocabulary trained on the world's training texts."""
        if self._tokenizer is None:
            hp = self.hparams
            if self._model_folder is not None:
                self._tokenizer = FlavaTokenizer.from_pretrained(self._model_folder)
                self._tokenizer_origin = f"{self._model_folder}/vocab.txt"
            elif hp.tokenizer:
                self._tokenizer = FlavaTokenizer.from_pretrained(hp.tokenizer)
                self._tokenizer_origin = f"{hp.tokenizer}/vocab.txt"
            elif self._zoo_name is not None:
                from ..zoo import load_tokenizer

                self._tokenizer = load_tokenizer(self._zoo_name, max_length=hp.max_length)
                self._tokenizer_origin = f"the vocabulary of {self._zoo_name}"
            elif self.source == "shapes":
                self._tokenizer = _shapes_tokenizer(hp.seed, hp.max_length)
                self._tokenizer_origin = "trained on the shapes world's texts"
            else:
                raise ValueError(
                    f"{self.task_name} needs a tokenizer: give data tokenizer (a folder with "
                    "vocab.txt) or a model exported with its vocab.txt"
                )
        return self._tokenizer

    # ----------------------------------------------------------------------- splits
    def _available(self) -> list[str]:
        hp = self.hparams
        if self.source == "shapes":
            return list(SPLITS)
        out = [s for s in SPLITS if getattr(hp, s) is not None]
        if "val" not in out and hp.val_from_train > 0 and "train" in out:
            out.insert(1, "val")
        if self._source.named_splits:
            out = list(SPLITS)
        return out

    @property
    def test_split_names(self) -> list[str]:
        """Names of the test splits (several for GLUE MNLI or a list of ``test`` dicts), as the
        records name them: what was evaluated.

        Shapes: ``test`` or ``test_novel``. GLUE without ``test``: its dev sets (``dev``,
        MNLI ``dev_matched`` / ``dev_mismatched``). An official ``test`` dict is named by its
        ``name`` key, else its ``split`` key, else its files (:func:`_test_split_name`):
        VQAv2 ``val2014`` from ``v2_OpenEnded_mscoco_val2014_questions.json``, Hateful Memes
        ``dev_seen`` from ``dev_seen.jsonl``, SNLI-VE ``test`` from ``snli_ve_test.jsonl``,
        CIFAR ``test``, an image folder its folder's name; else ``test`` (``test<i>`` in a
        list). ``train`` / ``val`` become ``train_as_test`` / ``val_as_test`` (those names
        are the training and validation splits'); repeated names get ``_1``, ``_2``, ...
        """
        hp = self.hparams
        if self._source.named_splits and hp.test is None:
            return list(self._default_splits()[1])
        if self.source == "shapes" and not isinstance(hp.test, list):
            return [hp.test_split]
        if hp.test is None:
            return ["test"]
        listed = isinstance(hp.test, list)
        names: list[str] = []
        for i, spec in enumerate(hp.test if listed else [hp.test]):
            name = _test_split_name(self._source, dict(spec)) or (f"test{i}" if listed else "test")
            if name in ("train", "val"):
                name = f"{name}_as_test"
            base, n = name, 1
            while name in names:
                name, n = f"{base}_{n}", n + 1
            names.append(name)
        return names

    def _shapes_split(self, split: str) -> str:
        return self.hparams.test_split if split == "test" else split

    def _split_spec(self, split: str) -> dict[str, Any]:
        """Keyword arguments of the official dataset of ``split`` (train / val / a test name)."""
        hp = self.hparams
        if self._source.named_splits:
            return self._named_split_spec(split)
        if split in ("train", "val"):
            spec = getattr(hp, split)
        elif isinstance(hp.test, list):
            names = self.test_split_names
            if split not in names:
                raise ValueError(f"unknown test split {split!r}; have {names}")
            spec = hp.test[names.index(split)]
        else:
            spec = hp.test
        if spec is None:
            raise ValueError(f"{self.task_name}: no {split} split given (data {split}: {{...paths}})")
        return dict(spec)

    def _default_splits(self) -> tuple[str, list[str]]:
        """A named-splits source's default validation split and test splits (GLUE: ``dev``,
        MNLI ``dev_matched`` and both dev sets)."""
        default = self.family.default_splits
        if default is None:
            raise ValueError(f"task family {self.family.name} declares no default splits for {self.source}")
        return default(self.task_options)

    def _named_split_spec(self, split: str) -> dict[str, Any]:
        """Keyword arguments of ``split`` for a source whose splits are files of one folder
        (GLUE): the folder given once serves every split, and ``split`` names the file."""
        hp = self.hparams
        if split in ("train", "val"):
            given = getattr(hp, split)
        elif isinstance(hp.test, list):
            given = hp.test[self.test_split_names.index(split)]
        else:
            given = hp.test
        spec = dict(given or {})
        if "root_or_file" not in spec:
            other = next((s for s in (hp.train, hp.val, hp.test if isinstance(hp.test, dict) else None) if s), None)
            if other is None or "root_or_file" not in other:
                raise ValueError(f"GLUE {hp.glue_task}: give the GLUE folder as train: {{root_or_file: ...}}")
            spec["root_or_file"] = other["root_or_file"]
        default = {"train": "train", "val": self._default_splits()[0]}
        spec.setdefault("split", default.get(split, split if split.startswith(("dev", "test")) else "dev"))
        return spec

    def _reader_kwargs(self, spec: dict[str, Any], split: str, transform: Any) -> dict[str, Any]:
        """The reader's keyword arguments for ``split``: the split's own, then the source's
        defaults (:class:`~flava_zoo.tasks.Source`), the options it takes, the transform."""
        src, hp = self._source, self.hparams
        kwargs = dict(spec)
        kwargs.pop("name", None)
        for key, value in {**src.defaults, **(src.train_defaults if split == "train" else {})}.items():
            kwargs.setdefault(key, value)
        for key, value in (src.split_arg(split) if src.split_arg is not None else {}).items():
            kwargs.setdefault(key, value)
        for key, option in src.options.items():
            kwargs[key] = hp[option]
        if src.answer_vocab and not (split == "train" and not hp.answer_vocab):
            kwargs.setdefault("answer_vocab", self.answer_vocab())
        if src.transform:
            kwargs["transform"] = transform
        return kwargs

    def _shapes_dataset(self, split: str, transform: Any = None) -> Dataset:
        """The shapes world's dataset of ``split`` (``train``, ``val``, ``test``; ``test``
        is :attr:`test_split`) for this family."""
        src = self._source
        kwargs = self._reader_kwargs({}, split, transform)
        kwargs.pop("transform", None)
        args = (self.world, self._shapes_split(split)) + ((transform,) if src.transform else ())
        return resolve(src.reader)(*args, **kwargs)

    def _raw_dataset(self, split: str) -> Dataset:
        """The dataset of ``split`` before key normalisation (cached)."""
        if split in self._raw:
            return self._raw[split]
        hp = self.hparams
        train = split == "train"
        transform = image_transform(hp.image_size, train=train and hp.train_augment)
        src = self._source
        if self.source == "shapes":
            ds: Dataset = self._shapes_dataset(split, transform)
        else:
            if self._derived_from_train(split):
                full = self._official(self._split_spec("train"), "train", transform)
                ds = _Subset(full, self._holdout(len(full), held_out=split == "val"))  # type: ignore[arg-type]
            elif split == "val" and hp.val is None and not src.named_splits:
                raise ValueError(f"{self.task_name}: no val split given (data val: {{...}} or val_from_train)")
            else:
                ds = self._official(self._split_spec(split), split, transform)
            if train and src.train_view:
                ds = getattr(ds, src.train_view)()  # Karpathy: fine-tune on every caption
        self._raw[split] = ds
        return ds

    def _derived_from_train(self, split: str) -> bool:
        """Whether ``split`` is a seeded part of the official training split (``val_from_train``)."""
        hp = self.hparams
        return hp.val is None and hp.val_from_train > 0 and not self._source.named_splits and split in ("train", "val")

    def _holdout(self, n: int, held_out: bool) -> list[int]:
        """Seeded split of the official training set into train / held-out validation."""
        k = int(round(n * self.hparams.val_from_train))
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.hparams.seed)).tolist()
        return sorted(order[:k] if held_out else order[k:])

    def answer_vocab(self) -> list[str]:
        """VQAv2 answer vocabulary: ``answer_vocab`` file, else the training annotations' top answers."""
        if self._answer_vocab is None:
            hp = self.hparams
            if hp.answer_vocab:
                self._answer_vocab = _read_answer_vocab(Path(hp.answer_vocab))
            elif hp.train is not None:
                self._answer_vocab = list(self._raw_dataset("train").answer_vocab)  # type: ignore[attr-defined]
            else:
                raise ValueError(
                    "VQAv2 evaluation needs the training answer vocabulary: give answer_vocab "
                    "(a file, one answer a line) or the training split"
                )
        return self._answer_vocab

    def _official(self, spec: dict[str, Any], split: str, transform: Any) -> Dataset:
        cls = OFFICIAL_SOURCES[self.source]
        kwargs = self._reader_kwargs(spec, split, transform)
        accepted = set(inspect.signature(cls).parameters)
        unknown = sorted(set(kwargs) - accepted)
        if unknown:
            raise ValueError(
                f"{self.task_name} {split}: unknown field(s) {unknown} for {cls.__name__}; "
                f"it takes {sorted(accepted - {'transform'})}"
            )
        return cls(**kwargs)

    # ------------------------------------------------------------------ datasets
    def dataset(self, split: str) -> Dataset:
        """The common-key dataset of ``split`` (``train``, ``val``, ``test`` or a test-split name).

        Raises ``ValueError`` when the split has no samples.
        """
        if split in self._datasets:
            return self._datasets[split]
        raw = self._raw_dataset(split if self.source != "shapes" or split in SPLITS else "test")
        if len(raw) == 0:  # type: ignore[arg-type]
            raise ValueError(
                f"{self.task_name} {split} split has no samples: refusing to train or evaluate on zero samples"
            )
        view = _View(raw, self._normaliser(split))
        self._datasets[split] = view
        return view

    def _normaliser(self, split: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
        src = self._source
        return _Normalise(src.keys, src.derive, self.num_labels if src.derive is not None else 0)

    def retrieval_split(self, split: str) -> tuple[Dataset, list[str], Tensor]:
        """Retrieval evaluation data of ``split``: a dataset of images (``{"image", "index"}``,
        one per image), every caption, and the image index of each caption (five per shapes scene,
        one with ``retrieval_captions="primary"``)."""
        if not self.is_retrieval:
            raise ValueError(f"{self.task_name} is not a retrieval task")
        if self.source == "shapes":
            wsplit = self._shapes_split(split)
            n = self.world.split_size(wsplit)
            if n == 0:
                raise ValueError(f"{self.task_name} {split} split has no samples: refusing to evaluate on zero samples")
            pairs = self._shapes_dataset(split, image_transform(self.hparams.image_size))
            if self.hparams.retrieval_captions == "primary":
                texts = [self.world.caption(wsplit, i) for i in range(n)]
                text_to_image = torch.arange(n)
            else:
                texts = [c for i in range(n) for c in self.world.scene_captions(wsplit, i)]
                text_to_image = torch.arange(n).repeat_interleave(CAPTIONS_PER_SCENE)
            return _View(pairs, _Normalise(IMAGES_KEYS)), texts, text_to_image
        raw = self._official(self._split_spec(split), split, image_transform(self.hparams.image_size))
        return _View(raw, _Normalise(IMAGES_KEYS)), list(raw.texts), raw.text_to_image  # type: ignore[attr-defined]

    # ----------------------------------------------------------------- lightning
    def setup(self, stage: str | None = None) -> None:
        """Open the splits the stage needs (so that bad paths and empty splits fail early)."""
        if stage in (None, "fit"):
            self.dataset("train")
            if "val" in self._available():
                self.dataset("val")
        if stage in (None, "test"):
            if not self.is_retrieval:
                for name in self.test_split_names:
                    self.dataset(name)
        if stage == "validate":
            self.dataset("val")
        if stage == "predict" and not self.is_retrieval:
            for name in self.test_split_names:
                self.dataset(name)

    def collator(self, split: str, need_labels: bool = True) -> TaskCollator:
        """The collate function for ``split``."""
        tok = self.tokenizer if self.needs_tokenizer else None
        return TaskCollator(tok, self.hparams.max_length, self.is_regression, need_labels, split)

    def loader(self, dataset: Dataset, split: str, shuffle: bool = False, need_labels: bool = True) -> DataLoader:
        """A data loader over ``dataset`` with this task's collator."""
        hp = self.hparams
        bs = hp.batch_size if shuffle else (hp.eval_batch_size or hp.batch_size)
        return DataLoader(
            dataset,
            batch_size=bs,
            shuffle=shuffle,
            num_workers=hp.num_workers,
            collate_fn=self.collator(split, need_labels),
            drop_last=shuffle and len(dataset) > bs,  # type: ignore[arg-type]
            persistent_workers=hp.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.dataset("train"), "train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        if "val" not in self._available():
            return []
        return self.loader(self.dataset("val"), "val")

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        if self.is_retrieval:
            images, _, _ = self.retrieval_split("test")
            return self.loader(images, "test")
        names = self.test_split_names
        loaders = [self.loader(self.dataset(n), n) for n in names]
        return loaders[0] if len(loaders) == 1 else loaders

    def predict_dataloader(self) -> DataLoader | list[DataLoader]:
        """``flava-zoo predict`` reads the test splits, which need no labels (official test
        files carry none): one loader per test split, in :attr:`test_split_names` order."""
        if self.is_retrieval:
            images, _, _ = self.retrieval_split("test")
            return self.loader(images, "test", need_labels=False)
        loaders = [self.loader(self.dataset(n), n, need_labels=False) for n in self.test_split_names]
        return loaders[0] if len(loaders) == 1 else loaders


@functools.lru_cache(maxsize=4)
def _shapes_tokenizer(seed: int, max_length: int) -> FlavaTokenizer:
    """The fallback shapes-world tokenizer (trained once per process and seed)."""
    from ..data.datamodules import shapes_tokenizer

    world = ShapesWorld(seed=seed, sizes={"train": _TOKENIZER_SCENES})
    return shapes_tokenizer(world, max_length=max_length)


def _read_answer_vocab(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"answer vocabulary file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        vocab = json.loads(text)
        if not isinstance(vocab, list) or not all(isinstance(a, str) for a in vocab):
            raise ValueError(f"{path}: expected a JSON list of answer strings")
    else:
        vocab = [line.rstrip("\r\n") for line in text.splitlines() if line.strip()]
    if not vocab:
        raise ValueError(f"answer vocabulary file {path} is empty")
    return vocab


def _describe(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with each existing path replaced by (path, size, mtime) for cache keys."""
    out: dict[str, Any] = {}
    for key, value in sorted(spec.items()):
        if isinstance(value, str) and Path(value).exists():
            stat = Path(value).stat()
            out[key] = [str(Path(value).resolve()), stat.st_size, int(stat.st_mtime)]
        else:
            out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
    return out
