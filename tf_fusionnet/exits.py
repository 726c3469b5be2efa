"""The exit policy's math, shared by evaluation and export (numpy only): softmax confidences and
budgeted batch classification, MSDNet's dynamic evaluation exactly.

Thresholds are fitted on validation confidences only; test samples are only
ever classified with thresholds fixed beforehand. Numpy only, so the
on-device runner's decisions can be checked against it.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


def softmax(logits: np.ndarray, temperature: float | np.ndarray = 1.0) -> np.ndarray:
    """Softmax over the last axis, in float64 for stable confidences."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def exit_proportions(q: float, num_exits: int) -> np.ndarray:
    """MSDNet's target share of samples per exit: ``q**k / sum_j q**j`` for k = 1..K."""
    powers = q ** np.arange(1, num_exits + 1, dtype=np.float64)
    return powers / powers.sum()


def fit_thresholds(val_confidence: np.ndarray, proportions: Sequence[float]) -> np.ndarray:
    """Per-exit confidence thresholds fitted on validation (MSDNet's ``calc_threshold``).

    Args:
        val_confidence: (K, N) max softmax probability of every exit on validation.
        proportions: (K,) target share of samples per exit.

    Returns:
        (K,) thresholds. For k < K: ``n_k = floor(N * P_k)``; among the samples
        that have not exited yet, ordered by stage-k confidence (descending),
        ``T_k`` is the confidence of the n_k-th; if n_k is 0 or fewer samples
        remain, ``T_k = +inf``. Every remaining sample with confidence >= T_k
        exits. ``T_K = -inf``: every sample left exits at the last stage.
    """
    confidence = np.asarray(val_confidence, dtype=np.float64)
    num_exits, n = confidence.shape
    thresholds = np.full(num_exits, np.inf)
    exited = np.zeros(n, dtype=bool)
    for k in range(num_exits - 1):
        n_k = int(np.floor(n * proportions[k]))
        remaining = np.sort(confidence[k][~exited])[::-1]
        if 0 < n_k <= remaining.size:
            thresholds[k] = remaining[n_k - 1]
        exited |= confidence[k] >= thresholds[k]
    thresholds[-1] = -np.inf
    return thresholds


def exit_indices(confidence: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """(N,) 0-based exit of every sample: the first k with confidence_k >= T_k."""
    confidence = np.asarray(confidence, dtype=np.float64)
    passes = confidence >= np.asarray(thresholds, dtype=np.float64)[:, None]
    passes[-1] = True  # the last exit takes everything left
    return np.argmax(passes, axis=0)


@dataclasses.dataclass
class BudgetedResult:
    thresholds: list[float]
    exit_counts: list[int]
    avg_macs: float
    top1: float


def simulate(
    probs: np.ndarray, labels: np.ndarray, thresholds: Sequence[float], exit_macs: Sequence[float]
) -> BudgetedResult:
    """Classifies every sample at its first confident exit.

    Args:
        probs: (K, N, C) softmax of every exit.
        labels: (N,) integer labels.
        thresholds: (K,) as from :func:`fit_thresholds`.
        exit_macs: (K,) cumulative MACs of every exit.

    Returns:
        accuracy = correct / N; average cost = sum_k (exits at k / N) * MACs_k.
    """
    probs = np.asarray(probs)
    n = probs.shape[1]
    exits = exit_indices(probs.max(axis=2), thresholds)
    predictions = probs.argmax(axis=2)[exits, np.arange(n)]
    counts = np.bincount(exits, minlength=probs.shape[0])
    return BudgetedResult(
        thresholds=[float(t) for t in thresholds],
        exit_counts=[int(c) for c in counts],
        avg_macs=float(np.dot(counts / n, np.asarray(exit_macs, dtype=np.float64))),
        top1=float(np.mean(predictions == np.asarray(labels))),
    )


def budgeted_curve(
    val_probs: np.ndarray,
    test_probs: np.ndarray,
    test_labels: np.ndarray,
    exit_macs: Sequence[float],
    qs: Sequence[float] | None = None,
) -> list[dict]:
    """One (average MACs, top-1) point per q (default p/20 for p = 1..39, as MSDNet)."""
    qs = [p / 20 for p in range(1, 40)] if qs is None else qs
    val_confidence = np.asarray(val_probs).max(axis=2)
    points = []
    for q in qs:
        thresholds = fit_thresholds(val_confidence, exit_proportions(q, len(exit_macs)))
        result = simulate(test_probs, test_labels, thresholds, exit_macs)
        points.append({"q": float(q), **dataclasses.asdict(result)})
    return points


def thresholds_for_budget(
    val_probs: np.ndarray, val_labels: np.ndarray, exit_macs: Sequence[float], budget: float
) -> dict | None:
    """Thresholds whose average cost on validation is closest to ``budget`` without exceeding it.

    Candidates are the thresholds fitted for MSDNet's 39 values of q and for a
    finer geometric grid of q in [0.01, 100] (400 values), so the cost can land
    close to any budget. Returns None if even exiting everything at exit 1 costs
    more than the budget.
    """
    num_exits = len(exit_macs)
    val_confidence = np.asarray(val_probs).max(axis=2)
    qs = sorted(set([p / 20 for p in range(1, 40)]) | set(np.geomspace(0.01, 100, 400).tolist()))
    best = None
    for q in qs:
        thresholds = fit_thresholds(val_confidence, exit_proportions(q, num_exits))
        on_val = simulate(val_probs, val_labels, thresholds, exit_macs)
        if on_val.avg_macs <= budget and (best is None or on_val.avg_macs > best["val"].avg_macs):
            best = {"q": q, "thresholds": thresholds, "val": on_val}
    if best is None and exit_macs[0] <= budget:  # everyone at exit 1
        thresholds = np.full(num_exits, -np.inf)
        best = {"q": 0.0, "thresholds": thresholds, "val": simulate(val_probs, val_labels, thresholds, exit_macs)}
    return best
