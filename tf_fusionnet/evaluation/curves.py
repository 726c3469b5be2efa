"""Accuracy-against-MACs curves of summary entries, and the earlier reading of their differences.

An *entry* is what a benchmark keeps of a finished run: ``anytime`` (per exit: ``macs``, ``top1``)
and ``budgeted`` (per budget: ``avg_macs``, ``top1``). These are the curve operations the
comparison reports need (interpolation at equal MACs, the mean over seeds, an ablation's gain)
and the fixed-threshold verdicts of the earlier reports (issue 17), kept so those tables can
still be rebuilt. New claims are read with :mod:`tf_fusionnet.evaluation.compare`.

Numpy only.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# The budgets (millions of MACs per image) at which budgeted curves are read.
BUDGETS_M = (20, 30, 40, 50, 60)


def interpolate(xs: Sequence[float], ys: Sequence[float], x: float) -> float | None:
    """A curve's value at cost ``x`` (None outside its range: never extrapolated)."""
    points = sorted(zip(xs, ys))
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    if not xs or x < xs[0] or x > xs[-1]:
        return None
    return float(np.interp(x, xs, ys))


def exit_curve(entry: dict) -> tuple[list, list]:
    """(MACs, top-1) of every exit of a summary entry."""
    return [e["macs"] for e in entry["anytime"]], [e["top1"] for e in entry["anytime"]]


def budget_curve(entry: dict) -> tuple[list, list]:
    """Budgeted points plus the two ends (only exit 1; every image to the last exit)."""
    ends = [entry["anytime"][0], entry["anytime"][-1]]
    return ([p["avg_macs"] for p in entry["budgeted"]] + [e["macs"] for e in ends],
            [p["top1"] for p in entry["budgeted"]] + [e["top1"] for e in ends])


def threshold_verdict(difference: float | None, noise: float) -> str:
    """The earlier rule (issue 17): a difference is read as real only beyond a fixed ``noise``
    (:mod:`tf_fusionnet.evaluation.compare` replaces it with an interval and a margin test)."""
    if difference is None:
        return "not measured"
    if abs(difference) <= noise:
        return "within noise"
    return "supported" if difference > 0 else "not supported"


def seed_mean(runs: list[dict], budgets_m: Sequence[float] = BUDGETS_M) -> dict:
    """One entry for several seeds of one preset: per-exit test top-1 averaged (the exits cost the
    same MACs in every seed) and budgeted top-1 averaged at each of ``budgets_m`` (millions of MACs) (each run's
    budgeted curve interpolated there first, since their thresholds land at different costs)."""
    anytime = [{"exit": e[0]["exit"], "macs": e[0]["macs"], "top1": float(np.mean([x["top1"] for x in e]))}
               for e in zip(*(r["anytime"] for r in runs))]
    budgeted = []
    for b in budgets_m:
        points = [interpolate(*budget_curve(r), b * 1e6) for r in runs]
        if all(p is not None for p in points):
            budgeted.append({"avg_macs": b * 1e6, "top1": float(np.mean(points))})
    return {"name": f"mean of {', '.join(r['name'] for r in runs)}", "preset": runs[0]["preset"],
            "seeds": [r["seed"] for r in runs], "anytime": anytime, "budgeted": budgeted}


def unpaired_bounds(a: dict, b: dict) -> list[float]:
    """Per same-numbered exit, the standard error of a - b as if the two were tested on
    independent test sets of the same size (empty without ``test_images``)."""
    n_a, n_b = a.get("test_images"), b.get("test_images")
    if not (n_a and n_b):
        return []
    return [float(np.sqrt(x["top1"] * (1 - x["top1"]) / n_a + y["top1"] * (1 - y["top1"]) / n_b))
            for x, y in zip(a["anytime"], b["anytime"])]


# The paper: "each of the two contributions (the fusion layer and the stem layer) result in
# performance gains of the same order of magnitude". Read as: both gains beyond noise and the
# larger at most this many times the smaller (their ratio rounds to 10^0 on a log scale).
SAME_ORDER_FACTOR = 3.0


def contribution_gain(ablation: dict, reference: dict, removes: bool = True) -> tuple[float, int] | None:
    """Mean top-1 gain a contribution brings at equal MACs, and over how many exits.

    Read at the ablation's exits that lie inside the reference's cost range (the reference
    curve interpolated, never extrapolated). ``removes``: the ablation lacks the contribution
    (gain = reference - ablation); otherwise it adds it (gain = ablation - reference).
    """
    ref = exit_curve(reference)
    at_ref = [(y, interpolate(*ref, x)) for x, y in zip(*exit_curve(ablation))]
    deltas = [y - r for y, r in at_ref if r is not None]
    if not deltas:
        return None
    mean = float(np.mean(deltas))
    return (-mean if removes else mean), len(deltas)


def same_order_verdict(gain_a: float | None, gain_b: float | None, noise: float,
                       names: tuple[str, str] = ("the first", "the second")) -> str:
    """Verdict on "both contributions gain, by the same order of magnitude"."""
    if gain_a is None or gain_b is None:
        return "not measured"
    gains = dict(zip(names, (gain_a, gain_b)))
    losing = [n for n, g in gains.items() if g < -noise]
    if losing:
        return f"not supported ({' and '.join(losing)} costs accuracy beyond noise)"
    unclear = [n for n, g in gains.items() if g <= noise]
    if unclear:
        return f"within noise ({' and '.join(unclear)}: gain not beyond {100 * noise:.2f} points)"
    ratio = max(gain_a, gain_b) / min(gain_a, gain_b)
    if ratio <= SAME_ORDER_FACTOR:
        return f"supported (ratio {ratio:.1f})"
    return f"not supported (one gain is {ratio:.1f}x the other)"
