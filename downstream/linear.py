"""A batched, full-batch linear probe: every (seed, grid point) model of a fold trained as one matrix.

Model m is logits = standardise(x) @ W_m + b_m.  All M models share the input, so their weights are
kept side by side as one (dim, C*M) matrix and one step of all of them is two GEMMs: that is where the
speed over heareval's runner (one Lightning model per grid point, mini-batches of 1024) comes from.

- Loss: softmax cross-entropy (multiclass) or sigmoid BCE averaged over rows and classes (multilabel),
  the same reductions as heareval's `OneHotToCrossEntropyLoss` and `BCEWithLogitsLoss`; plus an L2
  penalty `weight_decay/2 * |W|^2` (bias not decayed).  Gradients are written out by hand (the loss is
  simple) and Adam is applied per model with its own learning rate: no autograd graph over M models.
- Full batch: one step = one epoch.  Standardisation (mean, std per dimension) is fitted on train.
- Initialisation: xavier-normal W from a generator seeded by the model's seed (the same draw for every
  grid point of one seed, so grid points differ only in their hyperparameters), zero bias.
- Early stopping per model on a validation score, checked every `eval_every` steps, stopping after
  `patience` checks without strict improvement (heareval's `EarlyStopping(min_delta=0)` rule); the
  weights at the best check are kept (heareval's `ModelCheckpoint`).
- Deterministic: no randomness beyond the seeded initialisation, fixed operation order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch


SMALL_PROBLEM = 2e8  # rows x dim x classes x models below which one thread is used


@dataclass(frozen=True)
class GridPoint:
    lr: float
    weight_decay: float

    def as_dict(self) -> dict:
        return {"lr": self.lr, "weight_decay": self.weight_decay}


# lr x L2: a small grid is enough for a convex problem on standardised inputs.
DEFAULT_GRID = tuple(GridPoint(lr, wd) for lr in (1e-3, 1e-2) for wd in (1e-4, 1e-2))


@dataclass(frozen=True)
class ProbeSettings:
    grid: tuple[GridPoint, ...] = DEFAULT_GRID
    max_steps: int = 500
    eval_every: int = 5
    patience: int = 10  # checks without improvement (= 50 steps)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def as_dict(self) -> dict:
        return {
            "grid": [p.as_dict() for p in self.grid],
            "max_steps": self.max_steps,
            "eval_every": self.eval_every,
            "patience": self.patience,
            "optimizer": f"Adam(betas={self.betas}, eps={self.eps}), full batch, L2 weight decay",
        }


@dataclass
class LinearModels:
    """M trained linear models (their best checkpoints) and the train standardisation."""

    mean: torch.Tensor  # (dim,)
    std: torch.Tensor  # (dim,)
    weight: torch.Tensor  # (dim, C*M): column c*M + m is class c of model m
    bias: torch.Tensor  # (C*M,)
    n_models: int
    n_classes: int
    best_step: np.ndarray  # (M,) step of the kept weights
    best_valid: np.ndarray  # (M,) selection score at that step
    steps_run: int = 0
    extra: dict = field(default_factory=dict)

    def logits(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(n, dim) -> (M, n, C)."""
        xs = (torch.as_tensor(x, dtype=torch.float32) - self.mean) / self.std
        out = xs @ self.weight + self.bias
        return out.view(xs.shape[0], self.n_classes, self.n_models).permute(2, 0, 1)


def loss_per_model(logits: torch.Tensor, targets: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """heareval's training loss for each model: logits (M, n, C), targets (n, C) -> (M,)."""
    if prediction_type == "multiclass":
        return -(logits.log_softmax(dim=2) * targets).sum(dim=2).mean(dim=1)
    y = targets.unsqueeze(0).expand_as(logits)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(dim=(1, 2))


def standardiser(x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    xt = torch.as_tensor(x, dtype=torch.float64)
    mean = xt.mean(dim=0)
    std = xt.std(dim=0, unbiased=False)
    # constant dimensions carry no information: leave them at zero instead of dividing by ~0
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return mean.float(), std.float()


def xavier_normal(seed: int, dim: int, n_classes: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(dim, n_classes, generator=g) * (2.0 / (dim + n_classes)) ** 0.5


def train_linear(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    prediction_type: str,
    seeds: list[int],
    points: list[GridPoint],
    selection: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    maximize: bool,
    settings: ProbeSettings = ProbeSettings(),
) -> LinearModels:
    """Train models m = (seeds[m], points[m]) together.  `selection(logits (M, n_valid, C), y_valid)` -> (M,)
    scores decides early stopping (higher is better when `maximize`)."""
    # Small problems run on one thread: their GEMMs take ~ms, where intra-op threading gains little and,
    # on a shared (oversubscribed) machine, costs 10x in spin-waits (measured: 24 s vs 2.2 s).
    small = x_train.shape[0] * x_train.shape[1] * y_train.shape[1] * len(seeds) < SMALL_PROBLEM
    before = torch.get_num_threads()
    if small:
        torch.set_num_threads(1)
    try:
        return _train(x_train, y_train, x_valid, y_valid, prediction_type, seeds, points, selection, maximize, settings)
    finally:
        torch.set_num_threads(before)


def _train(x_train, y_train, x_valid, y_valid, prediction_type, seeds, points, selection, maximize, settings):
    assert len(seeds) == len(points)
    M = len(seeds)
    n, dim = x_train.shape
    C = y_train.shape[1]
    mean, std = standardiser(x_train)
    xs = (torch.as_tensor(x_train, dtype=torch.float32) - mean) / std
    xv = (torch.as_tensor(x_valid, dtype=torch.float32) - mean) / std
    y = torch.as_tensor(y_train, dtype=torch.float32)
    yv = torch.as_tensor(y_valid, dtype=torch.float32)

    inits = {s: xavier_normal(s, dim, C) for s in dict.fromkeys(seeds)}
    # class-major columns (c*M + m): the softmax over classes then reduces over a strided axis with the
    # M models contiguous, which vectorises (model-major with C ~ 10 is several times slower)
    W = torch.stack([inits[s] for s in seeds], dim=2).reshape(dim, C * M).contiguous()
    b = torch.zeros(C * M)
    lr = torch.tensor([p.lr for p in points], dtype=torch.float32).repeat(C)  # per column
    wd = torch.tensor([p.weight_decay for p in points], dtype=torch.float32).repeat(C)
    beta1, beta2 = settings.betas
    mW, vW = torch.zeros_like(W), torch.zeros_like(W)
    mb, vb = torch.zeros_like(b), torch.zeros_like(b)
    y_rep = y.unsqueeze(2).expand(n, C, M).reshape(n, C * M)
    grad_scale = 1.0 / n if prediction_type == "multiclass" else 1.0 / (n * C)

    def check(weight, bias) -> torch.Tensor:
        logits = (xv @ weight + bias).view(xv.shape[0], C, M).permute(2, 0, 1)
        return selection(logits, yv)

    # like heareval, the first check comes after `eval_every` steps: the random initialisation is never kept
    best_score = torch.full((M,), -math.inf if maximize else math.inf)
    best_W, best_b = W.clone(), b.clone()
    best_step = np.zeros(M, dtype=np.int64)
    since = torch.zeros(M, dtype=torch.long)
    stopped = torch.zeros(M, dtype=torch.bool)
    step = 0
    for step in range(1, settings.max_steps + 1):
        logits = xs @ W + b  # (n, C*M)
        if prediction_type == "multiclass":
            z = logits.view(n, C, M)
            prob = (z - z.amax(dim=1, keepdim=True)).exp_()
            prob = prob.div_(prob.sum(dim=1, keepdim=True)).view(n, C * M)
        else:
            prob = torch.sigmoid(logits)
        g = (prob - y_rep) * grad_scale
        gW = xs.T @ g + wd * W
        gb = g.sum(dim=0)
        # Adam (Kingma & Ba), bias-corrected, per column learning rate
        c1, c2 = 1 - beta1**step, 1 - beta2**step
        for p, gp, m, v in ((W, gW, mW, vW), (b, gb, mb, vb)):
            m.mul_(beta1).add_(gp, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(gp, gp, value=1 - beta2)
            p.sub_(lr * (m / c1) / ((v / c2).sqrt() + settings.eps))
        if step % settings.eval_every == 0:
            score = check(W, b)
            better = (score > best_score) if maximize else (score < best_score)
            better &= ~stopped
            if better.any():
                cols = better.repeat(C)
                best_W[:, cols] = W[:, cols]
                best_b[cols] = b[cols]
                best_score = torch.where(better, score, best_score)
                best_step[better.numpy()] = step
            since = torch.where(better, torch.zeros_like(since), since + 1)
            stopped |= since >= settings.patience
            if bool(stopped.all()):
                break
    return LinearModels(
        mean, std, best_W, best_b, M, C, best_step, best_score.numpy().astype(np.float64), steps_run=step
    )
