"""Batched validation metrics for model selection, and the bridge to heareval's own score functions.

The probe trains many models at once (seeds x grid points) and checks each on validation every few
steps; calling heareval's score functions there (sklearn, one model at a time) would dominate the run.
`selection_scores` computes the scene metrics for all models in one go in torch; it is used ONLY to
early-stop and to pick a grid point.  Every reported number comes from `heareval_scores`, which calls
heareval's own score classes (`heareval.score.available_scores`) exactly as heareval's runner does.
tests/test_downstream_metrics.py checks the batched forms against heareval's.
"""

from __future__ import annotations

import math

import torch


def _average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """scores (M, n, C), targets (n, C) -> per-model per-class AP (M, C); NaN for classes without positives.
    Ties are broken by order (exact for tie-free scores)."""
    order = scores.argsort(dim=1, descending=True, stable=True)
    t = targets.unsqueeze(0).expand_as(scores).gather(1, order)
    tp = t.cumsum(dim=1)
    rank = torch.arange(1, scores.shape[1] + 1, dtype=scores.dtype).view(1, -1, 1)
    npos = targets.sum(dim=0)
    ap = (tp / rank * t).sum(dim=1) / npos
    return torch.where(npos > 0, ap, torch.full_like(ap, math.nan))


def _auc(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mann-Whitney AUC per model and class (M, C); NaN where a class lacks positives or negatives."""
    ranks = scores.argsort(dim=1, stable=True).argsort(dim=1).to(scores.dtype) + 1
    npos = targets.sum(dim=0)
    nneg = targets.shape[0] - npos
    pos_rank_sum = (ranks * targets.unsqueeze(0)).sum(dim=1)
    auc = (pos_rank_sum - npos * (npos + 1) / 2) / (npos * nneg)
    return torch.where((npos > 0) & (nneg > 0), auc, torch.full_like(auc, math.nan))


def _nanmean(x: torch.Tensor, dim: int) -> torch.Tensor:
    ok = ~torch.isnan(x)
    return torch.where(ok, x, torch.zeros_like(x)).sum(dim) / ok.sum(dim).clamp(min=1)


def selection_scores(name: str, logits: torch.Tensor, targets: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """Score `name` for every model: logits (M, n, C), targets (n, C) multi-hot -> (M,).

    Ranking metrics use monotone transforms of heareval's probabilities (log-softmax / logits), which
    rank identically but saturate less."""
    if name in ("top1_acc", "pitch_acc", "chroma_acc"):
        pred = logits.argmax(dim=2)
        true = targets.argmax(dim=1).unsqueeze(0)
        if name == "chroma_acc":
            pred, true = pred % 12, true % 12
        return (pred == true).to(logits.dtype).mean(dim=1)
    ranked = logits.log_softmax(dim=2) if prediction_type == "multiclass" else logits
    if name == "mAP":
        return _nanmean(_average_precision(ranked, targets), 1)
    if name == "aucroc":
        return _nanmean(_auc(ranked, targets), 1)
    if name == "d_prime":
        auc = _auc(ranked, targets).clamp(1e-6, 1 - 1e-6)
        return _nanmean(torch.special.ndtri(auc) * math.sqrt(2.0), 1)
    raise ValueError(f"no batched form of {name}")


# --- heareval's own scores --------------------------------------------------------------------------------


def score_functions(evaluation: list[str], label_to_idx: dict[str, int]) -> list:
    """heareval's score objects for a task's `evaluation` list, built the way its runner builds them."""
    from heareval.score import available_scores

    return [available_scores[name](label_to_idx=label_to_idx) for name in evaluation]


def primary_value(ret) -> float:
    """heareval's rule: a tuple-returning score is represented by its first sub-score."""
    return float(ret[0][1]) if isinstance(ret, tuple) else float(ret)


def heareval_scores(prefix: str, scores: list, score_args: tuple) -> dict[str, float]:
    """The dict heareval's `log_scores` logs: `<prefix>_score` (first metric), `<prefix>_<metric>`, and
    `<prefix>_<metric>_<subscore>` for tuple-returning (sed_eval) metrics."""
    out: dict[str, float] = {}
    for score in scores:
        ret = score(*score_args)
        if isinstance(ret, tuple):
            out[f"{prefix}_{score}"] = float(ret[0][1])
            for sub, value in ret:
                out[f"{prefix}_{score}_{sub}"] = float(value)
        else:
            out[f"{prefix}_{score}"] = float(ret)
    return {f"{prefix}_score": out[f"{prefix}_{scores[0]}"], **out}

