"""Linear probe, CLIP's protocol: frozen features, logistic regression, L2 chosen on validation.

Features are extracted once per (model weights, data split, feature kind) and cached on disk
(:class:`FeatureCache`). A multinomial logistic regression is fitted in torch with L-BFGS
(so it runs on CPU or GPU), its L2 strength swept on a log grid and refined around the best
value by a few bisection rounds in log space (CLIP searched 1e-6..1e6 the same way); the
chosen strength is refitted on train + validation and scored on the test split: top-1 and,
where the task uses it, mean per-class accuracy. :func:`probe_metrics` returns fractions;
:class:`LinearProbe` logs and records them in percent, and records the chosen strength as a
hyperparameter (``hyperparameters["l2"]`` of its records), not as a metric.

``flava-zoo test --config recipes/probe/shapes_classification.yaml`` runs it through
:class:`LinearProbe`; :func:`sweep_l2` and :func:`fit_logistic_regression` work on any
feature tensors.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .._provenance import config_hash
from ..evaluation.results import to_percent
from .base import INPUTS, POOLINGS, DownstreamModule, model_origin

__all__ = [
    "DEFAULT_L2_GRID",
    "FeatureCache",
    "LinearProbe",
    "LogisticRegression",
    "ProbeResult",
    "fit_logistic_regression",
    "model_fingerprint",
    "probe_metrics",
    "run_probe",
    "sweep_l2",
]

DEFAULT_L2_GRID: tuple[float, ...] = tuple(10.0**e for e in range(-6, 3))
"""Initial L2 strengths (on the mean cross-entropy): 1e-6 .. 1e2."""


@dataclass
class LogisticRegression:
    """A fitted multinomial logistic regression on standardised features."""

    weight: Tensor
    bias: Tensor
    mean: Tensor
    std: Tensor
    l2: float

    def logits(self, features: Tensor) -> Tensor:
        x = (features.to(self.weight) - self.mean) / self.std
        return x @ self.weight + self.bias


def fit_logistic_regression(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    l2: float,
    max_iter: int = 300,
    init: LogisticRegression | None = None,
) -> LogisticRegression:
    """Minimise ``mean cross-entropy + l2 * ||W||^2`` with L-BFGS (strong Wolfe line search).

    Features are standardised with their own mean and standard deviation; the bias is not
    penalised. ``init`` warm-starts from another fit on the same features (the sweep does).
    """
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"expected features (N, D) and labels (N,), got {tuple(features.shape)} and {tuple(labels.shape)}")
    if features.shape[0] == 0:
        raise ValueError("cannot fit a classifier on zero samples")
    if l2 < 0:
        raise ValueError(f"l2 must be non-negative, got {l2}")
    with torch.inference_mode(False), torch.enable_grad():
        return _fit(features.clone(), labels.clone(), num_classes, l2, max_iter, init)


def _fit(
    features: Tensor, labels: Tensor, num_classes: int, l2: float, max_iter: int, init: LogisticRegression | None
) -> LogisticRegression:
    labels = labels.long().to(features.device)
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"labels outside 0..{num_classes - 1}")
    x = features.double()
    mean = x.mean(0)
    std = x.std(0, unbiased=False).clamp_min(1e-6)
    x = (x - mean) / std
    d = x.shape[1]
    if init is not None:
        weight = init.weight.detach().double().clone().requires_grad_(True)
        bias = init.bias.detach().double().clone().requires_grad_(True)
    else:
        weight = torch.zeros(d, num_classes, dtype=torch.float64, device=x.device, requires_grad=True)
        bias = torch.zeros(num_classes, dtype=torch.float64, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
        tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, labels) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return LogisticRegression(weight.detach(), bias.detach(), mean, std, float(l2))


def probe_metrics(logits: Tensor, labels: Tensor, num_classes: int, mean_per_class: bool) -> dict[str, float]:
    """Top-1 accuracy and (optionally) mean per-class accuracy over the classes present, as
    fractions in [0, 1] (records hold them x100)."""
    if labels.numel() == 0:
        raise ValueError("no samples to score: refusing to report accuracy of nothing")
    labels = labels.to(logits.device)
    pred = logits.argmax(1)
    out = {"accuracy": float((pred == labels).double().mean())}
    if mean_per_class:
        per_class = [float((pred[labels == c] == c).double().mean()) for c in range(num_classes) if (labels == c).any()]
        out["mean_per_class_accuracy"] = sum(per_class) / len(per_class)
    return out


def sweep_l2(
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    num_classes: int,
    grid: Sequence[float] = DEFAULT_L2_GRID,
    refine_steps: int = 2,
    max_iter: int = 300,
) -> tuple[float, dict[float, float]]:
    """Choose the L2 strength with the best validation accuracy.

    Fits every value of ``grid`` (strongest first, each warm-starting the next), then
    ``refine_steps`` times tries the geometric midpoints between the best value and its
    neighbours. Ties go to the stronger regularisation. Returns the chosen value and the
    validation accuracy of every value tried.
    """
    if not grid:
        raise ValueError("the L2 grid is empty")
    if val[1].numel() == 0:
        raise ValueError("the validation split has no samples: cannot choose the L2 strength")
    scores: dict[float, float] = {}
    fits: dict[float, LogisticRegression] = {}

    def score(l2: float, init: LogisticRegression | None) -> LogisticRegression:
        clf = fit_logistic_regression(train[0], train[1], num_classes, l2, max_iter, init)
        scores[l2] = probe_metrics(clf.logits(val[0]), val[1], num_classes, False)["accuracy"]
        fits[l2] = clf
        return clf

    previous = None
    for l2 in sorted(set(float(v) for v in grid), reverse=True):
        previous = score(l2, previous)
    step = math.log10(sorted(scores)[1] / sorted(scores)[0]) / 2 if len(scores) > 1 else 0.5
    for _ in range(refine_steps):
        best = _best(scores)
        for candidate in (best * 10**step, best / 10**step):
            if candidate not in scores:
                score(candidate, fits[best])
        step /= 2
    return _best(scores), scores


def _best(scores: dict[float, float]) -> float:
    return max(scores, key=lambda l2: (scores[l2], l2))


@dataclass
class ProbeResult:
    """Outcome of :func:`run_probe`."""

    l2: float
    val_accuracy: dict[float, float]
    metrics: dict[str, float]
    classifier: LogisticRegression
    num_test: int
    extra: dict[str, Any] = field(default_factory=dict)


def run_probe(
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    num_classes: int,
    mean_per_class: bool = True,
    grid: Sequence[float] = DEFAULT_L2_GRID,
    refine_steps: int = 2,
    refit_on_train_val: bool = True,
    max_iter: int = 300,
) -> ProbeResult:
    """Sweep the L2 on ``val``, refit on train (+ val), score ``test``."""
    if test[1].numel() == 0:
        raise ValueError("the test split has no samples: refusing to evaluate on zero samples")
    l2, scores = sweep_l2(train, val, num_classes, grid, refine_steps, max_iter)
    if refit_on_train_val:
        x = torch.cat([train[0], val[0].to(train[0])])
        y = torch.cat([train[1], val[1].to(train[1])])
    else:
        x, y = train
    clf = fit_logistic_regression(x, y, num_classes, l2, max_iter)
    metrics = probe_metrics(clf.logits(test[0]), test[1], num_classes, mean_per_class)
    return ProbeResult(l2, scores, metrics, clf, int(test[1].numel()))


# ------------------------------------------------------------------------ features
def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 (16 hex digits) of a model's parameters and buffers, names included."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class FeatureCache:
    """Feature tensors on disk, one ``<key>.pt`` file per (model, data split, feature kind)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.pt"

    def load(self, key: str) -> tuple[Tensor, Tensor] | None:
        path = self.path(key)
        if not path.is_file():
            return None
        data = torch.load(path, weights_only=True)
        return data["features"], data["labels"]

    def save(self, key: str, features: Tensor, labels: Tensor, meta: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path(key).with_suffix(".tmp")
        torch.save({"features": features.cpu(), "labels": labels.cpu(), "meta": repr(meta)}, tmp)
        tmp.replace(self.path(key))


class LinearProbe(DownstreamModule):
    """Linear probe of frozen features (run with ``flava-zoo test``).

    Train and validation features are extracted (or read from the cache) when the test
    starts, the L2 strength is swept on validation, test features are gathered by the test
    loop, and the final classifier's metrics are logged and recorded.

    Args:
        model: a registered architecture (random init), a zoo ``arch.tag`` or an exported folder.
        model_overrides: config fields to override by name.
        features: ``image`` (image tower), ``text`` (text tower) or ``multimodal`` (fusion
            encoder); default: what the task reads.
        pooling: ``cls`` (the class token), ``mean`` (mean of the tokens) or ``embedding``
            (a tower's contrastive embedding).
        num_classes: expected number of classes; a task with another label set is an error.
        l2_grid: initial L2 strengths of the sweep.
        refine_steps: bisection rounds around the best strength.
        refit_on_train_val: fit the final classifier on train + validation.
        max_iter: L-BFGS iterations per fit.
        cache_dir: feature cache folder; default ``feature_cache`` in the run folder.
        results: results file; default ``results.jsonl`` in the run folder.
        classifier: where ``flava-zoo test`` saves the fitted classifier and
            ``flava-zoo predict`` reads it (safetensors); default
            ``probe_classifier.safetensors`` in the run folder.
        predictions: ``flava-zoo predict``'s output (JSON lines); default
            ``predictions.jsonl`` in the run folder.
    """

    fit_refusal = "a linear probe runs with `flava-zoo test`, not `fit`"

    evaluation_args = ("results", "predictions", "submission", "classifier")

    def __init__(
        self,
        model: str = "flava-tiny",
        model_overrides: dict[str, Any] | None = None,
        features: str | None = None,
        pooling: str = "cls",
        num_classes: int | None = None,
        l2_grid: list[float] | None = None,
        refine_steps: int = 2,
        refit_on_train_val: bool = True,
        max_iter: int = 300,
        cache_dir: str | None = None,
        results: str | None = None,
        classifier: str | None = None,
        predictions: str | None = None,
    ) -> None:
        super().__init__(model, model_overrides)
        self.save_hyperparameters()
        if features is not None and features not in INPUTS:
            raise ValueError(f"features must be one of {INPUTS}, got {features!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.model.requires_grad_(False)
        self.extract_calls = 0
        self._train: tuple[Tensor, Tensor] | None = None
        self._val: tuple[Tensor, Tensor] | None = None
        self._test_parts: list[tuple[Tensor, Tensor]] = []
        self._test_cached: tuple[Tensor, Tensor] | None = None
        self.result: ProbeResult | None = None

    def setup(self, stage: str) -> None:
        if stage not in ("test", "predict"):
            raise ValueError(
                "a linear probe runs with `flava-zoo test` (features are frozen; nothing to fit by "
                "gradient), then `flava-zoo predict` with the classifier it saved"
            )
        dm = self.task_data()
        self.check_data_fits(dm)
        if "linear_probe" not in dm.family.modes or dm.is_regression:
            raise ValueError(f"a linear probe needs single-label classification, not {dm.task_name}")
        n = dm.num_labels
        if self.hparams.num_classes is not None and self.hparams.num_classes != n:
            names = dm.label_names
            raise ValueError(
                f"{dm.task_name} has {n} labels ({', '.join(names[:10])}) but the probe expects "
                f"{self.hparams.num_classes} classes"
            )
        self.kind = self.hparams.features or dm.inputs
        if self.kind != "image" and dm.inputs == "image":
            raise ValueError(f"{dm.task_name} has images only: probe features must be 'image'")
        dm.attach_model(self.hparams.model, self.model.config.text.vocab_size if self.kind != "image" else None)
        if len(dm.test_split_names) != 1:
            raise ValueError(f"a linear probe tests one split; {dm.task_name} has {dm.test_split_names}")

    # ------------------------------------------------------------ features
    def cache(self) -> FeatureCache:
        given = self.hparams.cache_dir
        return FeatureCache(given if given else Path(self.trainer.default_root_dir) / "feature_cache")

    def cache_key(self, split: str) -> str:
        dm = self.task_data()
        if not hasattr(self, "_fingerprint"):
            self._fingerprint = model_fingerprint(self.model)
        key = {"model": self._fingerprint, "features": self.kind, "pooling": self.hparams.pooling,
               "data": dm.fingerprint(split)}
        if self.kind != "image":
            key.update(max_length=dm.hparams.max_length, tokenizer=dm.tokenizer_origin)
        return config_hash(key)

    @torch.no_grad()
    def extract(self, batch: dict[str, Any]) -> Tensor:
        """Features of one batch (counted in ``extract_calls``)."""
        self.extract_calls += 1
        return self.encode(batch, self.kind, self.hparams.pooling).float()

    def _split_features(self, split: str) -> tuple[Tensor, Tensor]:
        cache, key = self.cache(), self.cache_key(split)
        hit = cache.load(key)
        if hit is not None:
            return hit
        dm = self.task_data()
        feats, labels = [], []
        was_training = self.training
        self.eval()
        for batch in dm.loader(dm.dataset(split), split):
            batch = self.transfer_batch_to_device(batch, self.device, 0)
            feats.append(self.extract(batch).cpu())
            labels.append(batch["labels"].cpu())
        self.train(was_training)
        x, y = torch.cat(feats), torch.cat(labels)
        cache.save(key, x, y, dm.fingerprint(split))
        return x, y

    def on_test_start(self) -> None:
        self._train = self._split_features("train")
        self._val = self._split_features("val")
        self._test_cached = self.cache().load(self.cache_key(self.task_data().test_split_names[0]))
        self._test_parts = []

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if self._test_cached is None:
            self._test_parts.append((self.extract(batch).cpu(), batch["labels"].cpu()))

    def on_test_epoch_end(self) -> None:
        dm = self.task_data()
        split = dm.test_split_names[0]
        if self._test_cached is not None:
            test = self._test_cached
        else:
            if not self._test_parts:
                raise ValueError(f"{dm.task_name} {split}: the test split yielded no samples")
            test = (torch.cat([p[0] for p in self._test_parts]), torch.cat([p[1] for p in self._test_parts]))
            self.cache().save(self.cache_key(split), test[0], test[1], dm.fingerprint(split))
        device = self.device
        move = lambda xy: (xy[0].to(device), xy[1].to(device))  # noqa: E731
        hp = self.hparams
        self.result = run_probe(
            move(self._train), move(self._val), move(test), dm.num_labels,
            mean_per_class=dm.mean_per_class, grid=hp.l2_grid or DEFAULT_L2_GRID,
            refine_steps=hp.refine_steps, refit_on_train_val=hp.refit_on_train_val, max_iter=hp.max_iter,
        )
        metrics = to_percent(self.result.metrics)
        self.log_dict({f"test/{k}": v for k, v in metrics.items()})
        # the chosen L2 strength is a selected hyperparameter, recorded as such, not a metric
        self.record(metrics, split, self.result.num_test, hyperparameters={"l2": float(self.result.l2)}, unit="%")
        if self.trainer.is_global_zero:
            self.save_classifier(self.result.classifier, dm.label_names)

    # -------------------------------------------------------- the classifier
    def classifier_path(self) -> Path:
        """``classifier`` when set, else ``probe_classifier.safetensors`` in the run folder."""
        given = self.hparams.classifier
        return Path(given) if given else Path(self.trainer.default_root_dir) / "probe_classifier.safetensors"

    def save_classifier(self, clf: LogisticRegression, label_names: list[str]) -> Path:
        """Write the fitted classifier (weights, standardisation, chosen L2, label set and the
        features it reads) to :meth:`classifier_path`, atomically."""
        import json
        import os

        from safetensors.torch import save_file

        path = self.classifier_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: getattr(clf, k).detach().float().cpu().contiguous() for k in ("weight", "bias", "mean", "std")}
        meta = {
            "l2": json.dumps(float(clf.l2)),
            "label_names": json.dumps(list(label_names)),
            "features": self.kind,
            "pooling": self.hparams.pooling,
            "lineage": json.dumps(self.lineage()),
            "model_fingerprint": model_fingerprint(self.model),
        }
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
        return path

    def load_classifier(self) -> tuple[LogisticRegression, list[str]]:
        """The classifier :meth:`save_classifier` wrote; an error naming the path (and the
        command that writes it) when there is none or it reads other features."""
        import json

        from safetensors import safe_open

        path = self.classifier_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"no fitted probe classifier at {path}: run `flava-zoo test` with this recipe first "
                "(it fits and saves one), or pass --model.init_args.classifier"
            )
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in ("weight", "bias", "mean", "std")}
        if meta.get("features") != self.kind or meta.get("pooling") != self.hparams.pooling:
            raise ValueError(
                f"{path} was fitted on {meta.get('features')} features pooled by {meta.get('pooling')}, "
                f"this probe reads {self.kind} features pooled by {self.hparams.pooling}"
            )
        if meta.get("model_fingerprint") != model_fingerprint(self.model):
            fitted = json.loads(meta.get("lineage", "{}")).get("pretrained", "another model")
            raise ValueError(
                f"{path} was fitted on the features of {fitted}, not of {model_origin(self.hparams.model)}: "
                "its weights differ, so its predictions would be meaningless; run `flava-zoo test` with "
                "this model first (or pass --model.init_args.classifier)"
            )
        clf = LogisticRegression(**{k: v.to(self.device) for k, v in tensors.items()}, l2=json.loads(meta["l2"]))
        return clf, json.loads(meta["label_names"])

    # ------------------------------------------------------------- predict
    def on_predict_start(self) -> None:
        self._classifier, self._label_names = self.load_classifier()
        dm = self.task_data()
        if list(self._label_names) != list(dm.label_names):
            raise ValueError(
                f"the probe classifier was fitted on {len(self._label_names)} labels, "
                f"{dm.task_name} has {dm.num_labels}: another label set"
            )
        self._predictions: list[dict[str, Any]] = []

    @torch.no_grad()
    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Predict with the saved classifier: one row per example (``id``, ``prediction``,
        per-class ``scores``)."""
        probs = self._classifier.logits(self.extract(batch)).softmax(-1).cpu()
        split = self.task_data().test_split_names[dataloader_idx]
        names = self._label_names
        for ident, p in zip(batch["ids"], probs):
            self._predictions.append({
                "split": split, "id": ident, "prediction": names[int(p.argmax())],
                "scores": {n: round(float(v), 6) for n, v in zip(names, p.tolist())},
            })  # fmt: skip

    def on_predict_epoch_end(self) -> None:
        self.write_predictions(self._predictions)
        self._predictions = []
