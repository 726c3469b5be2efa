"""The CIFAR-10 benchmark's report: matched-cost comparison of two models' curves."""

import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("cifar10_cpu", os.path.join(ROOT, "benchmarks", "cifar10_cpu.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_interpolate_never_extrapolates(bench):
    assert bench.interpolate([10, 20], [0.5, 0.7], 15) == pytest.approx(0.6)
    assert bench.interpolate([20, 10], [0.7, 0.5], 10) == pytest.approx(0.5)
    assert bench.interpolate([10, 20], [0.5, 0.7], 9.9) is None
    assert bench.interpolate([10, 20], [0.5, 0.7], 20.1) is None


def _write_results(out, cand_exits, base_exits, cand_points, base_points):
    def anytime(exits):
        return [{"exit": i + 1, "macs": m, "top1": a} for i, (m, a) in enumerate(exits)]

    cascade = {f"{p} {prec}": [{"mean_macs": 15e6, "mean_ms": 1.0}, {"mean_macs": 45e6, "mean_ms": 4.0}]
               for p in ("cand", "base") for prec in ("float32", "int8")}
    summary = {"models": {"cand": {"anytime": anytime(cand_exits), "train_epoch_seconds": [60.0, 60.0]},
                          "base": {"anytime": anytime(base_exits)}},
               "cascade": cascade, "wall_clock_seconds": {"train cand": 130.0, "train base": 300.0}}
    (out / "summary.json").write_text(json.dumps(summary))
    for name, points in (("cand", cand_points), ("base", base_points)):
        (out / name).mkdir()
        (out / name / "budgeted.json").write_text(json.dumps(
            {"num_val": 5000, "points": [{"avg_macs": m, "top1": a} for m, a in points]}))


def test_report_compares_at_the_candidates_costs(bench, tmp_path):
    _write_results(tmp_path,
                   cand_exits=[(10e6, 0.50), (20e6, 0.60), (30e6, 0.70)],
                   base_exits=[(12e6, 0.45), (24e6, 0.60), (36e6, 0.72)],
                   cand_points=[(20e6, 0.62), (40e6, 0.70)],
                   base_points=[(15e6, 0.50), (45e6, 0.74)])
    text = bench.write_report(str(tmp_path))
    assert (tmp_path / "results.md").read_text() == text
    # base at 20M: 0.45 + 8/12 * 0.15 = 0.55; at 30M: 0.66; exit 1 (10M) is below base's range.
    assert "| 2 | 20.00 | 60.00 | 24.00 | 60.00 | 55.00 | +5.00 |" in text
    assert "| 3 | 30.00 | 70.00 | 36.00 | 72.00 | 66.00 | +4.00 |" in text
    assert "| 1 | 10.00 | 50.00 | 12.00 | 45.00 | - | - |" in text
    assert "+5.00, +4.00 points (2 of 2 at or above)" in text
    # budgeted: base at 20M = 0.5 + 5/30 * 0.24 = 0.54 (+8.00); at 40M = 0.70 (+0.00).
    assert "2 at or above, difference from +0.00 to +8.00 points" in text
    # 40M row: both top-1 0.70, cascade ms at 40M = 1 + 25/30 * 3 = 3.50; 60M is outside.
    assert "| 40M | 70.00 | 3.50 | 3.50 | 70.00 | 3.50 | 3.50 |" in text
    assert "| 60M | - | - | - | - | - | - |" in text
    assert "30.00M / 36.00M MACs = 0.833x (goal <= 0.85x: met)" in text
    assert "cand: 2 min (2 min in 2 epochs); base: 5 min." in text


def test_report_says_when_the_goal_is_missed(bench, tmp_path):
    _write_results(tmp_path,
                   cand_exits=[(20e6, 0.50), (35e6, 0.60)],
                   base_exits=[(15e6, 0.52), (40e6, 0.70)],
                   cand_points=[(30e6, 0.55)], base_points=[(10e6, 0.40), (50e6, 0.80)])
    text = bench.write_report(str(tmp_path))
    assert "(0 of 2 at or above)" in text
    assert "0 at or above, difference from -5.00 to -5.00 points" in text
    assert "35.00M / 40.00M MACs = 0.875x (goal <= 0.85x: not met)" in text
