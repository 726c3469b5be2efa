"""Comparing two multi-exit models over training seeds and test images, with a verdict per claim.

A claim such as "FusionNet is 0.5 points ahead of MSDNet at 40M MACs" is read at *points*: an
exit cost (both models interpolated to the same MACs), a budget of budgeted batch classification,
or a summary fixed in advance (the mean over a cost range). At each point every model gives each
test image a score in [0, 1] (1: classified correctly; between exits, the linear interpolation of
its two neighbours, so the scores average to the interpolated accuracy). Model A's seed s is
paired with model B's seed s, and both are scored on the same images.

The estimate is the mean over seed pairs of the paired difference. Its standard error combines
the two sources of chance (:func:`paired_estimate`):

* training: the spread of the per-pair differences, ``var_s(d_s) / S``;
* the test images: ``var_i(delta_i) / N`` of the per-image difference averaged over the pairs.

Seeds share the test set, so the first alone misses how far another draw of test images would
move every pair together, and the second alone misses how far another training run would move
the model. The interval is Student's t with S - 1 degrees of freedom (S = 1: N - 1, the per-image
error alone, and the estimate says it rests on one seed). With three seeds t(0.975, 2) = 4.30:
the intervals are wide because three seeds say little about training noise.

A claim "A - B >= margin" is tested one-sided against its margin, not against 0
(:func:`margin_pvalues`); a family of such claims is Holm-corrected (:func:`holm`), and each gets
a verdict: *supported* (the corrected test that the difference exceeds the margin rejects),
*not supported* (the corrected test that it falls short of the margin rejects) or *undecided*.

Numpy and scipy only (no TensorFlow): it runs on committed per-image files.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from tf_fusionnet.exits import exit_indices, thresholds_for_budget
from tf_fusionnet.evaluation.metrics import softmax

VERDICTS = ("supported", "not supported", "undecided")


def scores_at_cost(correct: np.ndarray, exit_macs: Sequence[float], cost: float) -> np.ndarray | None:
    """Per-image score at ``cost`` MACs, interpolated between the two exits around it.

    Args:
        correct: (K, N) whether exit k classified image i correctly.
        exit_macs: (K,) cumulative MACs of the exits, increasing.
        cost: the MACs to read the model at.

    Returns:
        (N,) floats whose mean is the accuracy curve linearly interpolated at ``cost``, or None
        outside the exits' range (a model is never extrapolated).
    """
    macs = np.asarray(exit_macs, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if cost < macs[0] - 1e-9 or cost > macs[-1] + 1e-9:
        return None
    j = int(np.clip(np.searchsorted(macs, cost, side="right") - 1, 0, len(macs) - 1))
    if j == len(macs) - 1 or abs(cost - macs[j]) < 1e-9:
        return correct[j]
    w = (cost - macs[j]) / (macs[j + 1] - macs[j])
    return (1 - w) * correct[j] + w * correct[j + 1]


def scores_over_range(correct: np.ndarray, exit_macs: Sequence[float], low: float, high: float,
                      points: int = 64) -> np.ndarray | None:
    """Per-image mean of :func:`scores_at_cost` over ``points`` costs evenly spread on [low, high]
    (the area under the accuracy curve there, divided by its width); None if the model does not
    cover the whole range."""
    grid = np.linspace(low, high, points)
    parts = [scores_at_cost(correct, exit_macs, c) for c in grid]
    if any(p is None for p in parts):
        return None
    return np.mean(parts, axis=0)


def budgeted_scores(val_logits: np.ndarray, val_labels: np.ndarray, test_logits: np.ndarray,
                    test_labels: np.ndarray, exit_macs: Sequence[float], budget: float) -> dict | None:
    """Per-image correctness on test under thresholds fitted on validation for ``budget`` MACs.

    The thresholds are refitted here from the validation logits (evaluation's
    ``thresholds_for_budget``: the largest validation cost within the budget), so a budgeted
    figure can be recomputed from committed logits. Returns ``{"scores": (N,), "avg_macs",
    "top1"}`` on test, or None if no thresholds fit the budget.
    """
    val_probs, test_probs = softmax(val_logits), softmax(test_logits)
    fitted = thresholds_for_budget(val_probs, np.asarray(val_labels), exit_macs, budget)
    if fitted is None:
        return None
    thresholds = fitted["thresholds"]
    exits = exit_indices(test_probs.max(axis=2), thresholds)
    predictions = test_probs.argmax(axis=2)[exits, np.arange(test_probs.shape[1])]
    macs = np.asarray(exit_macs, dtype=np.float64)[exits]
    return {"scores": (predictions == np.asarray(test_labels)).astype(np.float64), "avg_macs": float(macs.mean()),
            "top1": float(np.mean(predictions == np.asarray(test_labels)))}


def budget_curve_scores(confidence: np.ndarray, predicted: np.ndarray, labels: np.ndarray,
                        thresholds: Sequence[Sequence[float]], exit_macs: Sequence[float]
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Per-image correctness along a budgeted curve, for :func:`scores_at_cost`.

    Args:
        confidence, predicted: (K, N) every exit's max softmax probability and class on test.
        labels: (N,) test labels.
        thresholds: per budgeted point, the K thresholds fitted on validation (budgeted.json).
        exit_macs: (K,) cumulative MACs of the exits.

    Returns:
        (P,) average test MACs of each point, increasing, and (P, N) whether each image is
        classified correctly there; the curve's two ends (every image at exit 1, every image at the
        last exit) are points too, as in the budgeted tables. Points of equal cost keep the first.
    """
    confidence, predicted = np.asarray(confidence, np.float64), np.asarray(predicted)
    correct_at_exit = predicted == np.asarray(labels)[None]
    macs_of_exit = np.asarray(exit_macs, dtype=np.float64)
    columns = np.arange(confidence.shape[1])
    points = [(macs_of_exit[0], correct_at_exit[0]), (macs_of_exit[-1], correct_at_exit[-1])]
    for point in thresholds:
        exits = exit_indices(confidence, point)
        points.append((float(macs_of_exit[exits].mean()), correct_at_exit[exits, columns]))
    points.sort(key=lambda p: p[0])
    kept = points[:1]
    for point in points[1:]:
        if point[0] - kept[-1][0] > 1e-6:
            kept.append(point)
    return np.array([p[0] for p in kept]), np.stack([p[1] for p in kept]).astype(np.float64)


@dataclasses.dataclass
class Estimate:
    """A - B at one point, over S seed pairs and N test images (differences as fractions)."""

    difference: float
    standard_error: float
    seed_error: float  # sqrt(var_s(d_s) / S); 0 with one pair
    image_error: float  # sqrt(var_i(delta_i) / N)
    df: int
    low: float  # two-sided interval at ``level``
    high: float
    level: float
    per_pair: list[float]
    num_images: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def paired_estimate(a: Sequence[np.ndarray | float], b: Sequence[np.ndarray | float],
                    level: float = 0.95) -> Estimate:
    """Mean over seed pairs of the paired per-image difference, with the combined standard error.

    Args:
        a, b: per seed (the same number for both, pair s = a[s] with b[s]), the (N,) per-image
            scores of the two models on the same test images. A pair may instead be two floats,
            the two accuracies at the point, for runs whose per-image predictions were not kept:
            it counts in the estimate and in the spread between seeds (so does a pair of which only
            one side has scores: they are averaged), and the per-image error is
            read from the pairs that have scores (conservative: the mean over fewer pairs varies
            more from image to image). At least one pair needs scores.
        level: coverage of the two-sided t interval.
    """
    from scipy import stats

    if len(a) != len(b) or not len(a):
        raise ValueError(f"need the same number (>= 1) of seeds for both models, got {len(a)} and {len(b)}")
    scored = [np.asarray(x, np.float64) - np.asarray(y, np.float64) for x, y in zip(a, b) if np.ndim(x) and np.ndim(y)]
    if not scored:
        raise ValueError("need per-image scores for at least one seed pair")
    diffs = np.stack(scored)
    if diffs.ndim != 2 or diffs.shape[1] < 2:
        raise ValueError(f"need (N,) scores of >= 2 images per seed, got shape {diffs.shape[1:]}")
    n = diffs.shape[1]
    per_pair = np.array([float(np.mean(x) - np.mean(y)) for x, y in zip(a, b)])
    pairs = len(per_pair)
    seed_var = per_pair.var(ddof=1) / pairs if pairs > 1 else 0.0
    image_var = diffs.mean(axis=0).var(ddof=1) / n
    se = float(np.sqrt(seed_var + image_var))
    df = pairs - 1 if pairs > 1 else n - 1
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    mean = float(per_pair.mean())
    return Estimate(mean, se, float(np.sqrt(seed_var)), float(np.sqrt(image_var)), df, mean - half, mean + half,
                    level, [float(v) for v in per_pair], n)


def margin_pvalues(estimate: Estimate, margin: float) -> tuple[float, float]:
    """One-sided p-values (p_exceeds, p_short) of ``A - B > margin`` and ``A - B < margin``."""
    from scipy import stats

    if estimate.standard_error == 0:
        gap = estimate.difference - margin
        return (0.0 if gap > 0 else 1.0), (0.0 if gap < 0 else 1.0)
    t = (estimate.difference - margin) / estimate.standard_error
    return float(stats.t.sf(t, estimate.df)), float(stats.t.cdf(t, estimate.df))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the input order."""
    p = np.asarray(pvalues, dtype=np.float64)
    order = np.argsort(p)
    m = len(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def verdicts(estimates: Mapping[str, Estimate], margins: Mapping[str, float] | float = 0.0,
             alpha: float = 0.05) -> dict[str, dict]:
    """A verdict per claim of one family ("A - B >= margin" at each named point), Holm-corrected.

    Returns, per name: ``verdict`` (one of :data:`VERDICTS`), the margin, and both adjusted
    one-sided p-values.
    """
    names = list(estimates)
    margin_of = (lambda name: float(margins)) if isinstance(margins, (int, float)) else (lambda name: margins[name])
    raw = [margin_pvalues(estimates[name], margin_of(name)) for name in names]
    exceeds = holm([r[0] for r in raw])
    short = holm([r[1] for r in raw])
    out = {}
    for name, p_hi, p_lo in zip(names, exceeds, short):
        verdict = "supported" if p_hi < alpha else "not supported" if p_lo < alpha else "undecided"
        out[name] = {"verdict": verdict, "margin": margin_of(name), "p_exceeds_holm": p_hi, "p_short_holm": p_lo}
    return out


def format_estimate(estimate: Estimate, points: bool = True) -> str:
    """``+0.42 [-0.31, +1.15]`` in percentage points (``points``) with its interval."""
    scale = 100.0 if points else 1.0
    return (f"{scale * estimate.difference:+.2f} [{scale * estimate.low:+.2f}, {scale * estimate.high:+.2f}]")


__all__ = ["Estimate", "VERDICTS", "budget_curve_scores", "budgeted_scores", "format_estimate", "holm", "margin_pvalues",
           "paired_estimate", "scores_at_cost", "scores_over_range", "verdicts"]
