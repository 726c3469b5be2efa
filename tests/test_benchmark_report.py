"""The CIFAR-10 benchmark's report: matched-cost comparison of two models' curves."""

import json
import time

import numpy as np
import pytest
from conftest import load_benchmark_script


@pytest.fixture(scope="module")
def bench():
    return load_benchmark_script("cifar10_cpu")


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
                   cand_exits=[(10e6, 0.50), (25e6, 0.60), (45e6, 0.70)],
                   base_exits=[(12e6, 0.45), (30e6, 0.60), (50e6, 0.72)],
                   cand_points=[(15e6, 0.58), (35e6, 0.68)],
                   base_points=[(18e6, 0.55), (40e6, 0.68)])
    text = bench.write_report(str(tmp_path))
    assert (tmp_path / "results.md").read_text() == text
    # base at 25M: 0.45 + 13/18 * 0.15 = 0.5583; at 45M: 0.69; exit 1 (10M) is below base's range.
    assert "| 1 | 10.00 | 50.00 | 12.00 | 45.00 | - | - |" in text
    assert "| 2 | 25.00 | 60.00 | 30.00 | 60.00 | 55.83 | +4.17 |" in text
    assert "| 3 | 45.00 | 70.00 | 50.00 | 72.00 | 69.00 | +1.00 |" in text
    assert "+4.17, +1.00 points (2 of 2 at or above)" in text
    # budgeted, base's curve closed by its exits: at 15M 0.50 (+8.00), at 35M 0.6505 (+2.95).
    assert "2 at or above, difference from +2.95 to +8.00 points" in text
    # 40M: cand between its last point (35M) and its last exit (45M); cascade ms 1 + 25/30 * 3.
    assert "| 20M | 60.50 | 1.50 | 1.50 | 56.18 | 1.50 | 1.50 |" in text
    assert "| 40M | 69.00 | 3.50 | 3.50 | 68.00 | 3.50 | 3.50 |" in text
    assert "| 60M | - | - | - | - | - | - |" in text
    assert "45.00M / 50.00M MACs = 0.900x (goal <= 0.85x: not met)" in text
    assert "Noise" not in text  # no paired errors in this summary: no line made up
    assert "cand: 2 min (2 min in 2 epochs); base: 5 min." in text


def test_report_says_when_the_candidate_is_behind(bench, tmp_path):
    _write_results(tmp_path,
                   cand_exits=[(20e6, 0.50), (35e6, 0.60)],
                   base_exits=[(15e6, 0.52), (45e6, 0.70)],
                   cand_points=[(30e6, 0.55)], base_points=[(10e6, 0.40), (50e6, 0.80)])
    text = bench.write_report(str(tmp_path))
    assert "-5.00, -4.00 points (0 of 2 at or above)" in text
    assert "0 at or above, difference from -6.00 to -6.00 points" in text
    assert "35.00M / 45.00M MACs = 0.778x (goal <= 0.85x: met)" in text


def test_report_gives_the_noise_scale(bench, tmp_path):
    _write_results(tmp_path, cand_exits=[(20e6, 0.50)], base_exits=[(15e6, 0.52), (45e6, 0.70)],
                   cand_points=[(30e6, 0.55)], base_points=[(10e6, 0.40), (50e6, 0.80)])
    summary = json.loads((tmp_path / "summary.json").read_text())
    summary["paired_exit_differences"] = [{"exit": 1, "top1_difference": -0.02, "standard_error": 0.0034},
                                          {"exit": 2, "top1_difference": 0.01, "standard_error": 0.0036}]
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    text = bench.write_report(str(tmp_path))
    assert "paired standard error of 0.34 to 0.36 points" in text
    assert "smaller than about 0.7 points" in text


def test_report_compares_the_candidate_with_every_baseline(bench, tmp_path):
    """A third preset (RANet) gets its own tables and goal checks against the candidate."""
    _write_results(tmp_path, cand_exits=[(20e6, 0.50), (35e6, 0.60)], base_exits=[(15e6, 0.52), (45e6, 0.70)],
                   cand_points=[(30e6, 0.55)], base_points=[(10e6, 0.40), (50e6, 0.80)])
    summary = json.loads((tmp_path / "summary.json").read_text())
    summary["models"]["third"] = {"anytime": [{"exit": 1, "macs": 10e6, "top1": 0.4},
                                              {"exit": 2, "macs": 70e6, "top1": 0.7}]}
    summary["paired_exit_differences_by_baseline"] = {
        "third": [{"exit": 1, "top1_difference": 0.1, "standard_error": 0.005}]}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "third").mkdir()
    (tmp_path / "third" / "budgeted.json").write_text(json.dumps(
        {"num_val": 5000, "points": [{"avg_macs": 30e6, "top1": 0.5}]}))
    text = bench.write_report(str(tmp_path))
    assert "Candidate `cand`, baseline `base`" in text and "Candidate `cand`, baseline `third`" in text
    assert "35.00M / 70.00M MACs = 0.500x" in text  # against the third model's last exit
    # exit 1 at 20M against third's 10M->70M line: 0.45, +5.00; exit 2 at 35M: 0.525, +7.50.
    assert "+5.00, +7.50 points (2 of 2 at or above)" in text
    assert text.count("paired standard error") == 1 and "0.50 to 0.50 points" in text
    assert text.count("Training wall clock") == 1


def test_cascade_latency_plots_every_budget(tmp_path):
    latency = load_benchmark_script("cascade_latency")
    row = {"preset": "fusionnet-cifar", "precision": "int8", "threads": 1, "whole_model_ms": 2.0,
           "cascade_no_exit_ms": 2.2,
           "budgets": [{"mean_macs": m * 1e6, "mean_ms": 0.04 * m, "predicted_ms_from_macs": 2.2 * m / 63.0}
                       for m in (17.0, 30.0, 63.0)]}
    path = tmp_path / "plot.png"
    with_floor = dict(row, budgets=[dict(b, bare_invokes_ms=0.9 * b["mean_ms"]) for b in row["budgets"]])
    latency.plot_budgets({"seven exits": [row], "four exits": [dict(with_floor, whole_model_ms=1.8)]}, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_cascade_latency_times_the_floor_after_each_answer():
    """in_turn_with_whole hands each image's answer to the floor, so the bare invokes run the
    stages that image ran, runs the whole model before the runner and before the floor, and
    returns the three means in the order the caller unpacks them."""
    latency = load_benchmark_script("cascade_latency")
    calls = []

    class Runner:
        reads_pixels = False

        def preprocess(self, img):
            calls.append(("preprocess", int(img)))
            return img

        def classify(self, img):
            calls.append(("classify", int(img)))
            return [{"exit": int(img) + 1}]

    def whole(x):
        calls.append(("whole", int(x)))
        time.sleep(0.004)

    def floor(answer):
        calls.append(("floor", answer["exit"]))
        time.sleep(0.002)

    whole_ms, floor_ms, runner_ms, answers = latency.in_turn_with_whole(Runner(), whole, np.arange(3), floor)
    # The runner and the floor each right after the whole model, never the floor after the runner.
    assert calls[:7] == [("preprocess", 0), ("whole", 0), ("classify", 0), ("preprocess", 0), ("whole", 0),
                         ("floor", 1), ("preprocess", 1)]
    assert [a["exit"] for a in answers] == [1, 2, 3] and calls[-1] == ("floor", 3)
    assert whole_ms > floor_ms >= 2.0 > runner_ms
    assert latency.in_turn_with_whole(Runner(), whole, np.arange(2))[1] == 0.0
