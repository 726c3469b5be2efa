"""The seed variance issue 44's one-seed comparisons borrow, fixed before the 300-epoch runs end.

One seed pair cannot separate training chance from a real difference, so the 300-epoch
comparison (one seed per model until the second seeds are in) takes the training-only variance of
a FusionNet-minus-MSDNet difference from the committed 30-epoch comparison: its three undistilled
seed pairs (seeds 0-2, the seed-0 rerun in place of the first run), at its twelve points (the seven
exits of FusionNet, the five budgets), by :func:`tf_fusionnet.evaluation.compare.seed_variance_of`,
pooled over the points with the degrees of freedom of one point (2).

    python benchmarks/cpu30/seed_prior.py     # prints it and writes benchmarks/results/paper300/seed_prior.json
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from common import ROOT  # noqa: E402
from cpu30.results import load_summary  # noqa: E402
from cpu30.verdicts import BASELINE, CANDIDATE, cells  # noqa: E402
from tf_fusionnet.evaluation.compare import SeedVariance, pooled_seed_variance, seed_variance_of  # noqa: E402
from tf_fusionnet.evaluation.curves import BUDGETS_M  # noqa: E402

SOURCE_OUT = os.path.join(ROOT, "benchmarks", "results", "cifar10_cpu30")


def thirty_epoch_prior(out: str = SOURCE_OUT) -> tuple[SeedVariance, dict]:
    """The pooled prior and, per point, its seed variance (fraction^2)."""
    found = cells(out, load_summary(out))
    a = [found[(CANDIDATE, False)][s] for s in sorted(found[(CANDIDATE, False)])]
    b = [found[(BASELINE, False)][s] for s in sorted(found[(BASELINE, False)])]
    points = {f"exit {k + 1} ({c / 1e6:.1f}M)": (lambda r, c=c: r.at_cost(c)) for k, c in enumerate(a[0].macs)}
    points.update({f"budget {m}M": (lambda r, m=m: r.at_budget(m * 1e6)) for m in BUDGETS_M})
    parts = {}
    for name, point in points.items():
        sa, sb = [point(r) for r in a], [point(r) for r in b]
        parts[name] = seed_variance_of(sa, sb, f"the 30-epoch comparison at {name}")
    prior = pooled_seed_variance(list(parts.values()), "the 30-epoch CIFAR-10 comparison (3 seed pairs, "
                                 "12 points pooled)")
    return prior, {k: v.variance for k, v in parts.items()}


def main() -> None:
    from tf_fusionnet.utils import atomic_write_json

    prior, per_point = thirty_epoch_prior()
    record = {"variance": prior.variance, "sd_points": 100 * prior.variance ** 0.5, "df": prior.df,
              "source": prior.source, "per_point_sd_points": {k: 100 * v ** 0.5 for k, v in per_point.items()}}
    print(json.dumps(record, indent=1))
    atomic_write_json(os.path.join(ROOT, "benchmarks", "results", "paper300", "seed_prior.json"), record)


if __name__ == "__main__":
    main()
