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

That estimator (:func:`paired_estimate`) is the 30-epoch comparison's, kept so its committed
verdicts can be reproduced. An audit found it far too conservative: the per-image term counts the
seed-by-image interaction a second time (it is already in the spread between seeds), and t(S - 1)
multiplies the per-image error too, which is known to N - 1 degrees of freedom. The method fixed
for the 300-epoch comparison (issue 44; docs/training.md, "Reading a difference with one or two
seeds") is :func:`seed_image_estimate`: a two-way (seed x image) decomposition, the seed variance
from the runs themselves where there are two seeds or more and from a source named in advance
where there is one, Welch-Satterthwaite degrees of freedom, and :func:`every_point_verdict` for
claims that must hold at every point (an intersection needs no multiplicity correction).

Numpy and scipy only (no TensorFlow): it runs on committed per-image files.
"""

from __future__ import annotations

import dataclasses
import math
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


@dataclasses.dataclass
class SeedVariance:
    """The variance of a seed pair's difference that comes from training alone (fraction^2), with
    its degrees of freedom and where it came from; ``df`` inf: taken as known."""

    variance: float
    df: float
    source: str


def seed_image_estimate(a: Sequence[np.ndarray], b: Sequence[np.ndarray], level: float = 0.95,
                        prior: SeedVariance | None = None) -> Estimate:
    """A - B over S seed pairs and N test images, with the two-way standard error (issue 44).

    Model: the per-image difference of pair s on image i is d_si = mu + a_s + b_i + e_si (training
    chance a, test-image chance b, their interaction e). The estimate is the mean of d over s and i;
    its variance is var(a) / S + var(b) / N + var(e) / (S N). The image means over the pairs have
    variance var(b) + var(e) / S, so ``var_i(mean_s d_si) / N`` is the last two terms exactly; the
    seed term needs var(a) alone, which the spread of the pair means overstates by var(e) / N:

    * S >= 2: var(a) = var_s(d_s) - MSE / N, MSE the residual mean square of the seed x image table
      (floored at 0), with S - 1 degrees of freedom; pooled with ``prior`` where one is given
      (weighted by degrees of freedom);
    * S = 1: var(a) is ``prior``'s, required (one pair cannot tell training chance from a real
      difference).

    The interval is Student's t at the Welch-Satterthwaite degrees of freedom of the two terms
    (normal where the seed variance is taken as known, or is 0).

    Args:
        a, b: per seed pair, (N,) per-image scores of the two models on the same test images.
        level: coverage of the two-sided interval.
        prior: the seed variance from elsewhere (:func:`seed_variance_of` on earlier runs).
    """
    from scipy import stats

    if len(a) != len(b) or not len(a):
        raise ValueError(f"need the same number (>= 1) of seeds for both models, got {len(a)} and {len(b)}")
    d = np.stack([np.asarray(x, np.float64) - np.asarray(y, np.float64) for x, y in zip(a, b)])
    if d.ndim != 2 or d.shape[1] < 2:
        raise ValueError(f"need (N,) per-image scores of >= 2 images per seed pair, got shape {d.shape[1:]}")
    pairs, n = d.shape
    image_var = float(d.mean(axis=0).var(ddof=1)) / n
    seed = seed_variance_of(a, b, "these runs") if pairs > 1 else None
    if prior is not None:
        if seed is None or math.isinf(prior.df):
            seed = prior if seed is None else SeedVariance(prior.variance, prior.df, prior.source)
        else:
            df = seed.df + prior.df
            seed = SeedVariance((seed.df * seed.variance + prior.df * prior.variance) / df, df,
                                f"these runs pooled with {prior.source}")
    if seed is None:
        raise ValueError("one seed pair: give the seed variance from elsewhere (prior=...), fixed in advance")
    seed_var = seed.variance / pairs
    se = math.sqrt(seed_var + image_var)
    if se == 0:
        df = math.inf
    else:
        df = (seed_var + image_var) ** 2 / ((seed_var ** 2 / seed.df if seed_var and not math.isinf(seed.df) else 0.0)
                                            + image_var ** 2 / (n - 1))
    quantile = float(stats.norm.ppf(0.5 + level / 2)) if math.isinf(df) else float(stats.t.ppf(0.5 + level / 2, df))
    mean = float(d.mean())
    return Estimate(mean, se, math.sqrt(seed_var), math.sqrt(image_var), df if math.isinf(df) else int(round(df)),
                    mean - quantile * se, mean + quantile * se, level, [float(v) for v in d.mean(axis=1)], n)


def seed_variance_of(a: Sequence[np.ndarray], b: Sequence[np.ndarray], source: str) -> SeedVariance:
    """The training-only variance of a pair's difference, from S >= 2 seed pairs of earlier runs
    (:func:`seed_image_estimate`'s decomposition), to serve as ``prior`` for runs with one pair."""
    if len(a) < 2:
        raise ValueError("need >= 2 seed pairs to estimate a seed variance")
    d = np.stack([np.asarray(x, np.float64) - np.asarray(y, np.float64) for x, y in zip(a, b)])
    pairs, n = d.shape
    pair_means, image_means = d.mean(axis=1), d.mean(axis=0)
    residual = d - pair_means[:, None] - image_means[None, :] + d.mean()
    mse = float((residual ** 2).sum()) / ((pairs - 1) * (n - 1))
    return SeedVariance(max(0.0, float(pair_means.var(ddof=1)) - mse / n), pairs - 1, source)


def pooled_seed_variance(parts: Sequence[SeedVariance], source: str) -> SeedVariance:
    """Several points' seed variances as one (their mean; the degrees of freedom of one point,
    since the points of one pair of runs are not independent)."""
    if not parts:
        raise ValueError("nothing to pool")
    return SeedVariance(float(np.mean([p.variance for p in parts])), min(p.df for p in parts), source)


def every_point_verdict(estimates: Mapping[str, Estimate], margin: float = 0.0, alpha: float = 0.025) -> dict:
    """A claim that must hold at every point ("ahead at every budget"): an intersection-union test.

    *supported* when each point's one-sided test of ``A - B > margin`` rejects at ``alpha``, with no
    multiplicity correction (the claim fails if any one point fails, so the family-wise error is at
    most ``alpha``); *not supported* when the test that some point falls short of the margin, a
    union, rejects after Holm's correction over the points; *undecided* otherwise.
    """
    raw = {name: margin_pvalues(e, margin) for name, e in estimates.items()}
    short = dict(zip(raw, holm([p[1] for p in raw.values()])))
    if all(p[0] < alpha for p in raw.values()):
        verdict = "supported"
    elif any(p < alpha for p in short.values()):
        verdict = "not supported"
    else:
        verdict = "undecided"
    return {"verdict": verdict, "margin": margin, "p_exceeds_max": max(p[0] for p in raw.values()),
            "p_short_holm_min": min(short.values())}


def margin_pvalues(estimate: Estimate, margin: float) -> tuple[float, float]:
    """One-sided p-values (p_exceeds, p_short) of ``A - B > margin`` and ``A - B < margin``."""
    from scipy import stats

    if estimate.standard_error == 0:
        gap = estimate.difference - margin
        return (0.0 if gap > 0 else 1.0), (0.0 if gap < 0 else 1.0)
    t = (estimate.difference - margin) / estimate.standard_error
    dist = stats.norm if math.isinf(estimate.df) else stats.t(estimate.df)
    return float(dist.sf(t)), float(dist.cdf(t))


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


__all__ = ["Estimate", "SeedVariance", "VERDICTS", "every_point_verdict", "pooled_seed_variance", "seed_image_estimate",
           "seed_variance_of", "budget_curve_scores", "budgeted_scores", "format_estimate", "holm", "margin_pvalues",
           "paired_estimate", "scores_at_cost", "scores_over_range", "verdicts"]
