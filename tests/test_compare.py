"""Comparison statistics (issue 33) on synthetic cases whose answer is known."""

import numpy as np
import pytest

from tf_fusionnet.exits import simulate, thresholds_for_budget
from tf_fusionnet.evaluation.compare import (Estimate, budgeted_scores, holm, margin_pvalues, paired_estimate,
                                             scores_at_cost, scores_over_range, verdicts)
from tf_fusionnet.evaluation.metrics import softmax


def test_scores_between_exits_average_to_the_interpolated_accuracy():
    rng = np.random.default_rng(0)
    correct = rng.random((3, 1000)) < np.array([[0.6], [0.7], [0.9]])
    macs = [10.0, 20.0, 40.0]
    acc = correct.mean(axis=1)
    for cost in (10.0, 12.5, 20.0, 33.0, 40.0):
        assert scores_at_cost(correct, macs, cost).mean() == pytest.approx(np.interp(cost, macs, acc))
    assert scores_at_cost(correct, macs, 9.0) is None and scores_at_cost(correct, macs, 41.0) is None
    # The range summary is the curve's mean height over the range.
    grid = np.linspace(15, 35, 64)
    assert scores_over_range(correct, macs, 15, 35).mean() == pytest.approx(np.interp(grid, macs, acc).mean())
    assert scores_over_range(correct, macs, 5, 35) is None


def test_the_estimate_is_the_mean_paired_difference_with_both_errors():
    rng = np.random.default_rng(1)
    n = 500
    a = [(rng.random(n) < p).astype(float) for p in (0.80, 0.82, 0.78)]
    b = [(rng.random(n) < p).astype(float) for p in (0.75, 0.79, 0.77)]
    est = paired_estimate(a, b)
    d = [x.mean() - y.mean() for x, y in zip(a, b)]
    assert est.difference == pytest.approx(np.mean(d))
    assert est.seed_error == pytest.approx(np.std(d, ddof=1) / np.sqrt(3))
    delta = np.mean([x - y for x, y in zip(a, b)], axis=0)
    assert est.image_error == pytest.approx(delta.std(ddof=1) / np.sqrt(n))
    assert est.standard_error == pytest.approx(np.hypot(est.seed_error, est.image_error))
    assert est.df == 2
    assert est.high - est.difference == pytest.approx(4.302653 * est.standard_error, rel=1e-5)
    one = paired_estimate(a[:1], b[:1])  # one seed: the per-image error alone, df N - 1
    assert one.seed_error == 0 and one.df == n - 1
    with pytest.raises(ValueError):
        paired_estimate(a, b[:2])


def test_the_interval_covers_the_true_difference_as_often_as_it_says():
    """Simulated experiments: each seed shifts a model's accuracy (training noise) and each test
    image has its own difficulty (shared by every run). The true difference is known (about 1.6
    points, from the normal model); a 95% interval must cover it in about 95% of the experiments, and one without the seed spread would not."""
    rng = np.random.default_rng(2)
    from scipy.stats import norm

    n, seeds, trials = 2000, 3, 300
    # Image i is right when noise + difficulty < base + seed shift: accuracy Phi(base / sqrt(2 + 0.06^2)).
    target = norm.cdf(1.0733 / np.sqrt(2 + 0.06 ** 2)) - norm.cdf(1.0 / np.sqrt(2 + 0.06 ** 2))
    covered = covered_image_only = 0
    for _ in range(trials):
        difficulty = rng.normal(size=n)
        def runs(base):
            return [(rng.normal(size=n) + difficulty < base + rng.normal(scale=0.06)).astype(float)
                    for _ in range(seeds)]
        a, b = runs(1.0733), runs(1.0)
        est = paired_estimate(a, b)
        covered += est.low <= target <= est.high
        half = 1.96 * est.image_error
        covered_image_only += est.difference - half <= target <= est.difference + half
    assert covered / trials >= 0.92
    assert covered_image_only / trials < covered / trials


def test_margin_claims_are_tested_against_the_margin_and_holm_corrected():
    est = Estimate(0.010, 0.001, 0.0006, 0.0008, 2, 0.0, 0.02, 0.95, [0.01] * 3, 10000)
    hi0, lo0 = margin_pvalues(est, 0.0)
    assert hi0 < 0.05 and lo0 > 0.95
    got = verdicts({"ahead": est, "far ahead": est, "level": est}, {"ahead": 0.0, "far ahead": 0.03, "level": 0.01})
    assert got["ahead"]["verdict"] == "supported"
    assert got["far ahead"]["verdict"] == "not supported"
    assert got["level"]["verdict"] == "undecided"
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    # Holm makes a family harder to pass than its members alone.
    borderline = Estimate(0.0045, 0.002, 0.001, 0.0017, 30, 0, 0, 0.95, [], 100)
    assert margin_pvalues(borderline, 0.0)[0] < 0.05
    assert verdicts({f"p{i}": borderline for i in range(5)})["p0"]["verdict"] == "undecided"


def test_budgeted_scores_refit_the_thresholds_on_validation():
    rng = np.random.default_rng(3)
    k, c = 3, 5
    def split(n):
        labels = rng.integers(0, c, n)
        logits = rng.normal(size=(k, n, c)) + np.arange(1, k + 1)[:, None, None] * np.eye(c)[labels] * 1.5
        return logits, labels
    val, val_labels = split(600)
    test, test_labels = split(800)
    macs = [1.0, 2.0, 4.0]
    got = budgeted_scores(val, val_labels, test, test_labels, macs, budget=2.0)
    fitted = thresholds_for_budget(softmax(val), val_labels, macs, 2.0)
    want = simulate(softmax(test), test_labels, fitted["thresholds"], macs)
    assert got["scores"].mean() == pytest.approx(want.top1)
    assert got["avg_macs"] == pytest.approx(want.avg_macs)
    assert budgeted_scores(val, val_labels, test, test_labels, macs, budget=0.5) is None


def test_a_pair_without_per_image_scores_counts_in_the_estimate_and_the_seed_spread():
    rng = np.random.default_rng(4)
    n = 400
    a = [(rng.random(n) < p).astype(float) for p in (0.80, 0.84, 0.79)]
    b = [(rng.random(n) < p).astype(float) for p in (0.77, 0.78, 0.80)]
    full = paired_estimate(a, b)
    lost = paired_estimate([a[0].mean()] + a[1:], [b[0].mean()] + b[1:])  # pair 0 kept accuracies only
    assert lost.difference == pytest.approx(full.difference)
    assert lost.seed_error == pytest.approx(full.seed_error) and lost.df == 2
    delta = np.mean([x - y for x, y in zip(a[1:], b[1:])], axis=0)
    assert lost.image_error == pytest.approx(delta.std(ddof=1) / np.sqrt(n))
    # A pair with scores on one side only is read as two accuracies, not as a per-image difference.
    half = paired_estimate([a[0]] + a[1:], [b[0].mean()] + b[1:])
    assert half.difference == pytest.approx(full.difference) and half.image_error == pytest.approx(lost.image_error)
    with pytest.raises(ValueError):
        paired_estimate([0.8, a[1]], [0.75, 0.72])


def test_the_budget_curve_per_image_averages_to_the_budgeted_points():
    from tf_fusionnet.evaluation.compare import budget_curve_scores

    rng = np.random.default_rng(5)
    k, n, c = 3, 900, 4
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(k, n, c)) + np.arange(1, k + 1)[:, None, None] * np.eye(c)[labels]
    probs = softmax(logits)
    confidence, predicted = probs.max(-1), probs.argmax(-1)
    macs = [1.0, 2.0, 4.0]
    thresholds = [[0.9, 0.5, -np.inf], [0.6, 0.4, -np.inf], [0.95, 0.95, -np.inf]]
    costs, correct = budget_curve_scores(confidence, predicted, labels, thresholds, macs)
    want = [simulate(probs, labels, t, macs) for t in thresholds]
    expected = sorted([(1.0, np.mean(predicted[0] == labels)), (4.0, np.mean(predicted[-1] == labels))]
                      + [(w.avg_macs, w.top1) for w in want])
    assert costs.tolist() == pytest.approx([e[0] for e in expected])
    assert correct.mean(axis=1).tolist() == pytest.approx([e[1] for e in expected])
    middle = (costs[1] + costs[2]) / 2
    assert scores_at_cost(correct, costs, middle).mean() == pytest.approx(np.interp(middle, costs, correct.mean(1)))
