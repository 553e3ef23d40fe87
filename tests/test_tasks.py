"""The task layer (one spec per family, below data and evaluation) and the one optimiser base."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from flava_zoo import tasks
from flava_zoo.tasks import TASKS, Source, TaskSpec, get_task, resolve
from flava_zoo.training.base import FlavaTask, OptimizerConfig

ONE_THREAD = True
PACKAGE = Path(__file__).resolve().parents[1] / "flava_zoo"
FAMILIES = ("image_classification", "text_classification", "vqa", "visual_entailment", "memes", "retrieval")


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports, at module level or inside functions."""
    package = list(path.relative_to(PACKAGE.parent).parts[:-1])  # the package the file is in
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)
    return names


def _layer_imports(layer: str) -> set[str]:
    return {name for path in (PACKAGE / layer).rglob("*.py") for name in _imported_modules(path)}


def _in(layer: str, names: set[str]) -> set[str]:
    return {n for n in names if n == f"flava_zoo.{layer}" or n.startswith(f"flava_zoo.{layer}.")}


def test_every_family_is_one_registered_spec_whose_readers_resolve():
    assert sorted(TASKS) == sorted(FAMILIES)
    for name, spec in TASKS.items():
        assert isinstance(spec, TaskSpec) and spec.name == name and get_task(name) is spec
        for source in (spec.shapes, *spec.official):
            assert isinstance(source, Source)
            assert callable(resolve(source.reader)), source.reader
        assert spec.metrics is not None or spec.head is None
    assert "zero_shot" in get_task("image_classification").modes
    assert get_task("vqa").targets == "soft" and get_task("retrieval").targets is None
    with pytest.raises(ValueError, match="unknown task family 'nope'"):
        get_task("nope")
    with pytest.raises(ValueError, match="does not feed vqa"):
        get_task("vqa").source("glue")


def test_the_task_layer_sits_below_data_and_evaluation():
    """tasks/ imports neither data nor evaluation; data imports evaluation nowhere (cycle 2)."""
    below = _layer_imports("tasks")
    assert not _in("data", below) and not _in("evaluation", below), below
    assert not _in("evaluation", _layer_imports("data"))
    assert _in("tasks", _layer_imports("data")) and _in("tasks", _layer_imports("evaluation"))


def test_old_names_are_the_task_layers_objects():
    from flava_zoo.data import tasks as readers
    from flava_zoo.evaluation import metrics

    assert readers.GLUE_TASKS is tasks.GLUE_TASKS and readers.GlueTaskSpec is tasks.GlueTaskSpec
    assert readers.SNLI_VE_LABELS is tasks.SNLI_VE_LABELS
    assert metrics.VQAAccuracy is tasks.VQAAccuracy and metrics.normalize_vqa_answer is tasks.normalize_vqa_answer
    assert metrics.glue_metrics is tasks.glue_metrics and metrics.memes_metrics is tasks.memes_metrics


def test_task_metrics_and_loss_come_from_the_spec():
    from flava_zoo.downstream import TaskData
    from flava_zoo.downstream.modules import default_loss, task_metrics

    vqa = TaskData("vqa", train_size=4, val_size=2, test_size=2)
    assert default_loss(vqa) == "bce" and list(task_metrics(vqa, vqa.num_labels)) == ["vqa_accuracy"]
    images = TaskData("image_classification", train_size=4, val_size=2, test_size=2)
    assert default_loss(images) == "cross_entropy"
    assert sorted(task_metrics(images, images.num_labels)) == ["accuracy", "mean_per_class_accuracy"]
    memes = TaskData("memes", train_size=4, val_size=2, test_size=2)
    assert sorted(task_metrics(memes, 2)) == ["accuracy", "auroc"]
    assert memes.label_names == ["false", "true"] and memes.task_name == "shapes/memes"


def test_configure_optimizers_is_written_once():
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name == "configure_optimizers":
                found.append(str(path.relative_to(PACKAGE)))
    assert found == ["training/base.py"]


def test_every_module_is_a_flava_task():
    from flava_zoo.downstream import (
        FinetuneModule,
        LinearProbe,
        RetrievalModule,
        ZeroShotClassifier,
    )
    from flava_zoo.training.module import FlavaPretrainModule

    for cls in (FlavaPretrainModule, FinetuneModule, RetrievalModule, LinearProbe, ZeroShotClassifier):
        assert issubclass(cls, FlavaTask)
        assert cls.configure_optimizers is FlavaTask.configure_optimizers
    with pytest.raises(ValueError, match="a linear probe runs with `flava-zoo test`"):
        LinearProbe(model="flava-tiny").configure_optimizers()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("lr", 0.0, "lr must be positive"), ("weight_decay", -1.0, "weight_decay must be non-negative"),
     ("betas", (0.9, 1.0), "betas must be two numbers"), ("warmup_steps", -1, "warmup_steps"),
     ("min_lr_ratio", 2.0, "min_lr_ratio must be in"), ("decay_steps", -5, "decay_steps")],
)  # fmt: skip
def test_optimizer_config_refuses_bad_settings(field, value, message):
    with pytest.raises(ValueError, match=message):
        OptimizerConfig(**{field: value})


def test_pretraining_settings_become_one_config_and_per_tower_groups():
    from flava_zoo.training.module import FlavaPretrainModule

    module = FlavaPretrainModule(stage="image", lr=2e-3, lr_multipliers={"image": 0.5}, weight_decay=0.05,
                                 warmup_steps=3, decay_steps=7)  # fmt: skip
    config = module.optimizer_config()
    assert (config.lr, config.weight_decay, config.warmup_steps, config.decay_steps) == (2e-3, 0.05, 3, 7)
    assert config.lr_multipliers == {"objective.model.image_encoder": 0.5}
    optimizer = module.configure_optimizers()["optimizer"]
    tower = {id(p) for p in module.model.image_encoder.parameters()}
    for group in optimizer.param_groups:
        in_tower = {id(p) in tower for p in group["params"]}
        assert len(in_tower) == 1
        assert group["initial_lr"] == pytest.approx(2e-3 * (0.5 if in_tower == {True} else 1.0))


def test_finetuning_layer_decay_multipliers_reach_the_groups():
    from flava_zoo.downstream import FinetuneModule

    module = FinetuneModule(inputs="image", num_classes=3, lr=1e-3, layer_decay=0.5, backbone_lr_multiplier=0.5)
    mults = module.lr_multipliers()
    assert mults["model"] == 0.5 and min(mults.values()) < 0.5
    groups = module.configure_optimizers()["optimizer"].param_groups
    head = {id(p) for p in module.head.parameters()}
    head_groups = [g for g in groups if any(id(p) in head for p in g["params"])]
    assert head_groups and all(g["lr_multiplier"] == 1.0 for g in head_groups)
    assert {g["lr_multiplier"] for g in groups} >= {1.0, 0.5 * 0.5}


def test_the_guard_leaves_the_learning_rate_alone():
    """On resume the configured rate is applied once, by FlavaTask.on_train_start: the
    non-finite guard's step no longer rewrites it."""
    from flava_zoo.training.guard import NonFiniteGuard

    layer = torch.nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1)
    layer(torch.ones(1, 2)).sum().backward()
    trainer = SimpleNamespace(
        strategy=SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: decision), global_step=3,
        lr_scheduler_configs=[], optimizers=[optimizer], precision_plugin=None,
    )  # fmt: skip
    module = SimpleNamespace(trainer=trainer, hparams={"lr": 0.5}, named_parameters=layer.named_parameters,
                             log=lambda *args, **kwargs: None)  # fmt: skip
    assert NonFiniteGuard().before_optimizer_step(module, optimizer)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1]
