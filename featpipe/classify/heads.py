"""Trainable PyTorch heads as scikit-learn estimators: ``linear`` (the new last layer) and ``mlp``.

Both follow scikit-learn's contract: ``__init__`` only stores arguments,
``fit`` validates them and sets ``classes_`` and learned attributes, and
``predict_proba`` / ``predict`` / ``score`` work on NumPy arrays. The learned
weights are kept as NumPy arrays (``weights_``), so a fitted head saves with
skops and predicts without pickled torch objects.
"""
from __future__ import annotations

import contextlib
import math
import re
import threading

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from ..settings import OPTIMIZERS, SCHEDULES
from .rows import ArrayRows, Rows

_SEEDED_FIT = threading.Lock()


def _param_groups(net: nn.Module, weight_decay: float) -> list[dict]:
    """Weights decayed, biases not: the L2 penalty of logistic regression, which leaves the intercept free."""
    decay = [p for n, p in net.named_parameters() if not n.endswith("bias")]
    free = [p for n, p in net.named_parameters() if n.endswith("bias")]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": free, "weight_decay": 0.0}]


def make_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """One of OPTIMIZERS over ``params`` (tensors, or groups that may carry their own lr and weight_decay)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name == "momentum":  # v <- a*v - lr*grad; w <- w + v
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "nesterov":  # the gradient at the look-ahead point w + a*v
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=0.99, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def make_schedule(name: str, opt: torch.optim.Optimizer, lr: float, epochs: int, steps_per_epoch: int,
                  step_epochs: tuple[int, ...], cycle_epochs: int):
    """A per-step learning-rate schedule (step and sgdr count in epochs, converted to steps); each
    parameter group keeps its own rate relative to the others (finetune's lower stages learn slower)."""
    if name == "constant":
        return None
    if name == "step":  # divide by 10 at each given epoch
        milestones = [e * steps_per_epoch for e in step_epochs]
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    if name == "cyclic":  # triangular between each group's lr/10 and its lr
        half = max(1, cycle_epochs * steps_per_epoch // 2)
        rates = [group["lr"] for group in opt.param_groups]
        return torch.optim.lr_scheduler.CyclicLR(opt, base_lr=[r / 10 for r in rates], max_lr=rates,
                                                 step_size_up=half, cycle_momentum=False)
    if name == "cosine":  # one half cosine, from lr down to 0 at the last step
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps_per_epoch))
    # sgdr: cosine annealing with warm restarts every cycle_epochs
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=max(1, cycle_epochs * steps_per_epoch))


def _device(name: str) -> torch.device:
    """'auto' -> the GPU when there is one; heads are small, so one device is plenty."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


# Below this many multiply-adds per mini-batch a step is too small to share between CPU threads:
# on a busy machine two threads waiting for each other made a 64-feature head 8x slower than one.
SMALL_STEP = 20_000_000


@contextlib.contextmanager
def _few_threads(device: torch.device, step_size: int):
    """One intra-op thread on the CPU for small steps (``step_size`` multiply-adds), the caller's setting
    restored afterwards."""
    threads = torch.get_num_threads()
    small = device.type == "cpu" and step_size < SMALL_STEP
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(threads)


def lone_rows_train(net: nn.Module) -> bool:
    """Whether ``net`` can train on a batch of one row (batch norm cannot)."""
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def _evaluate(net: nn.Module, rows: Rows, loss_fn, device: torch.device) -> tuple[float, float]:
    """Mean loss and accuracy of ``net`` over ``rows``, a block at a time."""
    net.eval()
    total, correct = 0.0, 0
    with torch.no_grad():
        for xb, yb in rows.blocks():
            xb, yb = torch.from_numpy(xb).to(device), torch.from_numpy(yb).to(device)
            logits = net(xb)
            total += float(loss_fn(logits, yb))
            correct += int((logits.argmax(1) == yb).sum())
    return total / len(rows), correct / len(rows)


class _HeadBase(ClassifierMixin, BaseEstimator):
    """Shared training loop: mini-batches, optimizer, schedule, early stopping on a validation split."""

    def _build(self, n_features: int, n_classes: int) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_params(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for name in ("lr", "max_epochs", "batch_size"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction!r}")
        if not (self.weight_decay == "auto" or (isinstance(self.weight_decay, (int, float))
                                                 and self.weight_decay >= 0)):
            raise ValueError(f"weight_decay must be 'auto' or >= 0, got {self.weight_decay!r}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(self.device)):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")

    def fit(self, X, y):
        """Train on (X, y); returns self. Seeded by ``random_state``, without touching torch's global RNG."""
        self._check_params()
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        return self._fit_rows(ArrayRows(X, np.asarray(y)))

    def fit_rows(self, rows: Rows):
        """Train on ``rows`` (for instance :class:`~featpipe.classify.rows.FileRows`, streamed from the
        feature file: memory bounded by the batch size, not the number of rows); returns self."""
        self._check_params()
        check_classification_targets(rows.labels)
        self.n_features_in_ = rows.n_features
        return self._fit_rows(rows)

    def _fit_rows(self, rows: Rows):
        self.classes_, y_idx = np.unique(rows.labels, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"need samples of at least 2 classes to fit, got {len(self.classes_)} class")
        # Initialisation and dropout draw from torch's global RNGs (the GPU's too,
        # when training there): one seeded fit at a time, the caller's state restored.
        device = _device(self.device)
        gpus = [device.index] if device.type == "cuda" else []
        with _SEEDED_FIT, torch.random.fork_rng(devices=gpus), _few_threads(
                device, self.batch_size * rows.n_features * max(len(self.classes_), getattr(self, "hidden", 0))):
            return self._train(rows.with_labels(y_idx.astype(np.int64)), device)

    def _train(self, rows: Rows, device: torch.device):
        gen = torch.Generator().manual_seed(int(self.random_state or 0))
        torch.manual_seed(int(self.random_state or 0))
        n = len(rows)
        order = torch.randperm(n, generator=gen).numpy()
        n_val = int(round(self.validation_fraction * n)) if self.early_stopping else 0
        if n_val and n - n_val < 2:
            n_val = 0
        val, train = rows.subset(order[:n_val]), rows.subset(order[n_val:])
        net = self._build(rows.n_features, len(self.classes_)).to(device)
        # 'auto': 1 / n, the penalty of LogisticRegression(C=1) (C * sum of losses + |w|^2 / 2),
        # written for the mean loss that a mini-batch estimates.
        self.weight_decay_ = 1.0 / len(train) if self.weight_decay == "auto" else float(self.weight_decay)
        opt = make_optimizer(self.optimizer, _param_groups(net, self.weight_decay_), self.lr, self.weight_decay_)
        bs = min(self.batch_size, len(train))
        skip_lone = len(train) > 1 and not lone_rows_train(net)
        if skip_lone and bs < 2:
            raise ValueError("batch_size must be at least 2 for batch normalisation (activation='bn')")
        steps = math.ceil(len(train) / bs)
        # step_epochs None: divide at a half and three quarters of the epochs, however many there are.
        milestones = (tuple(self.step_epochs) if self.step_epochs is not None
                      else (self.max_epochs // 2, 3 * self.max_epochs // 4))
        sched = make_schedule(self.schedule, opt, self.lr, self.max_epochs, steps, milestones, self.cycle_epochs)
        loss_fn = nn.CrossEntropyLoss(reduction="sum")
        self.history_ = {"train_loss": [], "train_accuracy": [], "val_loss": [], "val_accuracy": []}
        best, best_state, bad_epochs = math.inf, None, 0
        for _ in range(self.max_epochs):
            net.train()
            total, correct, seen = 0.0, 0, 0
            for xb, yb in train.batches(bs, gen):
                if skip_lone and len(yb) == 1:
                    continue  # a lone trailing row: batch norm cannot train on it, and it is one sample
                xb, yb = torch.from_numpy(xb).to(device), torch.from_numpy(yb).to(device)
                logits = net(xb)
                loss = loss_fn(logits, yb)
                opt.zero_grad()
                (loss / len(yb)).backward()
                opt.step()
                if sched is not None:
                    sched.step()
                total += float(loss.detach())
                correct += int((logits.argmax(1) == yb).sum())
                seen += len(yb)
            self.history_["train_loss"].append(total / seen)
            self.history_["train_accuracy"].append(correct / seen)
            if n_val:
                vloss, vacc = _evaluate(net, val, loss_fn, device)
                self.history_["val_loss"].append(vloss)
                self.history_["val_accuracy"].append(vacc)
                if vloss < best - 1e-6:
                    best, bad_epochs = vloss, 0
                    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                else:
                    bad_epochs += 1
                    if bad_epochs >= self.patience:
                        break
        if best_state is not None:
            net.load_state_dict(best_state)
        self.n_epochs_ = len(self.history_["train_loss"])
        self.weights_ = {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}
        return self

    def _net(self) -> nn.Module:
        # Built on the meta device: no initialisation (nor draws from torch's RNG) for
        # weights that load_state_dict replaces at once.
        with torch.device("meta"):
            net = self._build(self.n_features_in_, len(self.classes_))
        net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in self.weights_.items()}, assign=True)
        return net.eval()

    def _logits(self, X) -> np.ndarray:
        check_is_fitted(self, "weights_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        with torch.no_grad():
            return self._net()(torch.from_numpy(X)).numpy()

    def decision_function(self, X) -> np.ndarray:
        """Logits, (n, n_classes); for two classes the margin of ``classes_[1]``, (n,), as scikit-learn expects."""
        z = self._logits(X)
        return z[:, 1] - z[:, 0] if z.shape[1] == 2 else z

    def predict_proba(self, X) -> np.ndarray:
        z = self._logits(X)
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        z = self._logits(X)  # first: it raises NotFittedError before fit
        return self.classes_[z.argmax(axis=1)]


class LinearHead(_HeadBase):
    """Softmax regression trained with mini-batch SGD variants: a CNN's new last layer.

    By default it is scikit-learn's ``LogisticRegression()`` trained another
    way: the same L2 penalty (``weight_decay='auto'``: 1 / n_rows, which is
    C = 1; the bias is not decayed), minimised to the end (300 epochs of Adam,
    the rate divided by 10 at epochs 150 and 225) rather than stopped early,
    since the validation loss of a well-regularised softmax can rise from the
    first epoch while its accuracy still climbs; so the two agree on nearly
    every prediction (``bench/fit_speed.py``, docs/benchmarks.md).

    Parameters follow the lecture's recipe: ``optimizer`` in sgd, momentum,
    nesterov, rmsprop (decay 0.99), adam; ``schedule`` in constant, step
    (divide by 10 at ``step_epochs``; None: at 1/2 and 3/4 of ``max_epochs``), cyclic (triangular, ``cycle_epochs``
    long), sgdr (cosine with warm restarts every ``cycle_epochs``), cosine (one half cosine to 0);
    ``weight_decay``; early stopping on ``validation_fraction`` of the rows
    after ``patience`` epochs without improvement; ``random_state``;
    ``device`` (auto: the GPU when there is one). ``fit_rows`` trains from
    rows streamed out of a feature file.
    """

    def __init__(self, lr=0.01, optimizer="adam", schedule="step", weight_decay="auto", max_epochs=300,
                 batch_size=256, early_stopping=False, validation_fraction=0.1, patience=10,
                 step_epochs=None, cycle_epochs=10, random_state=0, device="auto"):
        self.lr = lr
        self.optimizer = optimizer
        self.schedule = schedule
        self.weight_decay = weight_decay
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.step_epochs = step_epochs
        self.cycle_epochs = cycle_epochs
        self.random_state = random_state
        self.device = device

    def _build(self, n_features: int, n_classes: int) -> nn.Module:
        return nn.Linear(n_features, n_classes)


class MLPHead(_HeadBase):
    """One hidden layer with batch normalisation + ReLU (``activation='bn'``) or SELU, and dropout."""

    def __init__(self, hidden=256, activation="bn", dropout=0.5, lr=0.001, optimizer="adam", schedule="constant",
                 weight_decay=1e-4, max_epochs=100, batch_size=256, early_stopping=True, validation_fraction=0.1,
                 patience=10, step_epochs=(30, 60), cycle_epochs=10, random_state=0, device="auto"):
        self.hidden = hidden
        self.activation = activation
        self.dropout = dropout
        self.lr = lr
        self.optimizer = optimizer
        self.schedule = schedule
        self.weight_decay = weight_decay
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.step_epochs = step_epochs
        self.cycle_epochs = cycle_epochs
        self.random_state = random_state
        self.device = device

    def _check_params(self) -> None:
        super()._check_params()
        if self.activation not in ("bn", "selu"):
            raise ValueError(f"activation must be 'bn' or 'selu', got {self.activation!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")

    def _build(self, n_features: int, n_classes: int) -> nn.Module:
        if self.activation == "selu":  # self-normalising: SELU with alpha dropout
            body = [nn.Linear(n_features, self.hidden), nn.SELU(), nn.AlphaDropout(self.dropout)]
        else:
            body = [nn.Linear(n_features, self.hidden), nn.BatchNorm1d(self.hidden), nn.ReLU(), nn.Dropout(self.dropout)]
        return nn.Sequential(*body, nn.Linear(self.hidden, n_classes))
