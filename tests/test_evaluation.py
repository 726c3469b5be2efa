import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tf_fusionnet.exits import (
    budgeted_curve,
    exit_indices,
    exit_proportions,
    fit_thresholds,
    simulate,
    thresholds_for_budget,
)
from tf_fusionnet.evaluation.metrics import (
    expected_calibration_error,
    fit_temperature,
    paired_difference,
    softmax,
    topk_accuracy,
)

INF = math.inf
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------- thresholds by hand


def test_thresholds_worked_example():
    conf = np.array([[0.9, 0.8, 0.7, 0.6],
                     [0.5, 0.95, 0.85, 0.4],
                     [0.1, 0.1, 0.1, 0.1]])
    # n_1 = floor(4 * 0.5) = 2: stage-1 order 0.9, 0.8 -> T_1 = 0.8, samples 0 and 1 exit.
    # n_2 = floor(4 * 0.25) = 1: remaining {2, 3} at stage 2: 0.85, 0.4 -> T_2 = 0.85.
    t = fit_thresholds(conf, [0.5, 0.25, 0.25])
    assert list(t) == [0.8, 0.85, -INF]
    assert list(exit_indices(conf, t)) == [0, 0, 1, 2]


def test_thresholds_ties_exit_together():
    conf = np.array([[0.8, 0.8, 0.8, 0.1], [0.5, 0.5, 0.5, 0.5]])
    t = fit_thresholds(conf, [0.25, 0.75])  # n_1 = 1, but three samples share the confidence
    assert t[0] == 0.8
    assert list(exit_indices(conf, t)) == [0, 0, 0, 1]


def test_thresholds_all_confident():
    conf = np.ones((3, 4))
    t = fit_thresholds(conf, [0.5, 0.25, 0.25])
    # T_1 = 1.0 and every sample ties with it; stage 2 then has nobody left (n_2 = 1 > 0 remaining).
    assert list(t) == [1.0, INF, -INF]
    assert list(exit_indices(conf, t)) == [0, 0, 0, 0]


def test_thresholds_none_confident_and_too_few_left():
    conf = np.array([[0.9, 0.2, 0.3, 0.4], [0.6, 0.5, 0.4, 0.3], [0.0, 0.0, 0.0, 0.0]])
    t = fit_thresholds(conf, [0.1, 0.6, 0.3])  # n_1 = floor(0.4) = 0: nobody exits at stage 1
    assert t[0] == INF
    assert t[1] == 0.5  # all 4 remain; n_2 = floor(2.4) = 2: stage-2 order 0.6, 0.5 -> 0.5
    conf2 = np.array([[0.9, 0.8, 0.7, 0.1], [0.3, 0.3, 0.3, 0.3], [0.0] * 4])
    t2 = fit_thresholds(conf2, [0.75, 0.5, 0.0])  # 3 exit at stage 1; n_2 = 2 > 1 left -> +inf
    assert list(t2) == [0.7, INF, -INF]
    assert list(exit_indices(conf2, t2)) == [0, 0, 0, 2]


def test_single_exit():
    conf = np.array([[0.3, 0.9]])
    t = fit_thresholds(conf, [1.0])
    assert list(t) == [-INF]
    probs = np.array([[[0.7, 0.3], [0.1, 0.9]]])
    result = simulate(probs, np.array([0, 0]), t, [5.0])
    assert result.exit_counts == [2] and result.avg_macs == 5.0 and result.top1 == 0.5


def test_proportions():
    p = exit_proportions(0.5, 3)
    np.testing.assert_allclose(p, np.array([0.5, 0.25, 0.125]) / 0.875)
    np.testing.assert_allclose(exit_proportions(1.0, 4), [0.25] * 4)


def test_cost_and_accuracy_arithmetic():
    # 2 exits, 4 samples; thresholds [0.6, -inf]. Exit 1 confidences 0.9, 0.5, 0.7, 0.55.
    probs = np.array([
        [[0.9, 0.1], [0.5, 0.5], [0.3, 0.7], [0.55, 0.45]],
        [[0.1, 0.9], [0.2, 0.8], [0.6, 0.4], [0.9, 0.1]],
    ])
    labels = np.array([0, 1, 0, 0])
    result = simulate(probs, labels, [0.6, -INF], [10.0, 30.0])
    # Sample 0 exits at 1 (pred 0, right), 1 at 2 (pred 1, right), 2 at 1 (0.7 >= 0.6, pred 1, wrong),
    # 3 at 2 (pred 0, right): 3/4 right; cost = 2/4 * 10 + 2/4 * 30 = 20.
    assert result.exit_counts == [2, 2]
    assert result.top1 == 0.75
    assert result.avg_macs == 20.0


def _reference_msdnet(val_conf, test_probs, test_labels, p, flops):
    """A loop-for-loop port of MSDNet-PyTorch's calc_threshold / calc_test_exp."""
    n_stage, n_sample = val_conf.shape
    sorted_idx = np.argsort(-val_conf, axis=1, kind="stable")
    filtered = np.zeros(n_sample)
    T = np.full(n_stage, 1e8)
    for k in range(n_stage - 1):
        count = 0
        out_n = math.floor(n_sample * p[k])
        for i in range(n_sample):
            ori = sorted_idx[k][i]
            if filtered[ori] == 0:
                count += 1
                if count == out_n:
                    T[k] = val_conf[k][ori]
                    break
        filtered += (val_conf[k] >= T[k])
    T[n_stage - 1] = -1e8
    conf, pred = test_probs.max(2), test_probs.argmax(2)
    acc, exp = 0, np.zeros(n_stage)
    for i in range(test_probs.shape[1]):
        for k in range(n_stage):
            if conf[k][i] >= T[k]:
                acc += int(pred[k][i] == test_labels[i])
                exp[k] += 1
                break
    return acc / test_probs.shape[1], float(np.sum(exp / test_probs.shape[1] * np.asarray(flops))), T


def test_matches_msdnet_reference_on_random_data():
    rng = np.random.default_rng(0)
    K, C = 4, 5
    val = softmax(rng.normal(size=(K, 300, C)) * 3)
    test = softmax(rng.normal(size=(K, 200, C)) * 3)
    labels = rng.integers(0, C, 200)
    flops = [10.0, 25.0, 45.0, 70.0]
    points = budgeted_curve(val, test, labels, flops)
    assert len(points) == 39
    for point in points:
        acc, cost, T = _reference_msdnet(val.max(2), test, labels, exit_proportions(point["q"], K), flops)
        assert point["top1"] == pytest.approx(acc)
        assert point["avg_macs"] == pytest.approx(cost)
        ours = np.where(np.isinf(point["thresholds"]), np.sign(point["thresholds"]) * 1e8, point["thresholds"])
        np.testing.assert_allclose(ours, T)


def test_no_test_sample_touches_threshold_fitting():
    rng = np.random.default_rng(1)
    val = softmax(rng.normal(size=(3, 100, 4)) * 2)
    test_a = softmax(rng.normal(size=(3, 50, 4)) * 2)
    test_b = softmax(rng.normal(size=(3, 50, 4)) * 5)
    labels = rng.integers(0, 4, 50)
    a = budgeted_curve(val, test_a, labels, [1, 2, 3])
    b = budgeted_curve(val, test_b, labels, [1, 2, 3])
    assert [p["thresholds"] for p in a] == [p["thresholds"] for p in b]
    c = budgeted_curve(softmax(rng.normal(size=(3, 100, 4))), test_a, labels, [1, 2, 3])
    assert [p["thresholds"] for p in a] != [p["thresholds"] for p in c]


def test_thresholds_for_budget():
    rng = np.random.default_rng(2)
    val = softmax(rng.normal(size=(3, 400, 4)) * 3)
    labels = rng.integers(0, 4, 400)
    macs = [10.0, 20.0, 40.0]
    fitted = thresholds_for_budget(val, labels, macs, 22.0)
    assert fitted["val"].avg_macs <= 22.0 and fitted["val"].avg_macs > 20.0
    assert thresholds_for_budget(val, labels, macs, 9.0) is None
    # A budget above the last exit's cost picks the most expensive policy on offer: nearly
    # every sample goes on to the last exit.
    everything = thresholds_for_budget(val, labels, macs, 100.0)
    assert everything["val"].avg_macs > 39.0 and everything["val"].exit_counts[-1] >= 0.95 * 400


def test_metrics():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.4, 0.35, 0.25]])
    labels = np.array([0, 1, 2])
    assert topk_accuracy(probs, labels, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(probs, labels, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(probs, labels, 5) == 1.0
    # Perfectly calibrated at confidence 1: ECE 0; always 90% sure and always wrong: ECE 0.9.
    assert expected_calibration_error(np.eye(3), np.arange(3)) == 0.0
    wrong = np.array([[0.9, 0.1], [0.9, 0.1]])
    assert expected_calibration_error(wrong, np.array([1, 1])) == pytest.approx(0.9)


def test_paired_difference():
    # Differences 0, 1, 0, 1: mean 0.5, sample std sqrt(1/3), standard error sqrt(1/3) / 2.
    mean, se = paired_difference(np.array([1, 1, 0, 1], bool), np.array([1, 0, 0, 0], bool))
    assert mean == pytest.approx(0.5) and se == pytest.approx(math.sqrt(1 / 3) / 2)
    # Two models right on the same images: no difference and no uncertainty, whatever the accuracy.
    same = np.array([1, 0, 1, 1, 0], bool)
    assert paired_difference(same, same) == (0.0, 0.0)
    with pytest.raises(ValueError, match="equal-length"):
        paired_difference(np.ones(3, bool), np.ones(4, bool))


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(3)
    true_logits = rng.normal(size=(4000, 5)) * 2
    labels = np.array([rng.choice(5, p=p) for p in softmax(true_logits)])
    temperature = fit_temperature(true_logits * 3.0, labels)  # overconfident by 3x
    assert temperature == pytest.approx(3.0, rel=0.1)


# ----------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory):
    """A run of its own (not the shared tiny_run): these tests write its eval/ folder."""
    from tf_fusionnet.training import TrainConfig, train

    run_dir = str(tmp_path_factory.mktemp("runs") / "fusionnet-tiny")
    train(TrainConfig(preset="fusionnet-tiny", epochs=1, batch_size=64, verbose=0, output=run_dir))
    return run_dir


def test_evaluate_run_files_and_cache(eval_run, monkeypatch):
    from tf_fusionnet.evaluation import report
    from tf_fusionnet.runs import reading as runs

    summary = report.evaluate_run(eval_run, budget=1.0e6, calibrate=True, verbose=0)
    out = os.path.join(eval_run, "eval")
    with np.load(os.path.join(out, "probs.npz")) as probs:
        assert probs["val_probs"].shape == (3, 50, 10) and probs["test_probs"].shape == (3, 300, 10)
        assert probs["val_labels"].shape == (50,) and probs["test_labels"].dtype.kind == "i"
        np.testing.assert_allclose(probs["test_probs"].sum(-1), 1.0, rtol=1e-5)
    anytime = json.load(open(os.path.join(out, "anytime.json")))
    assert [e["exit"] for e in anytime["exits"]] == [1, 2, 3]
    assert all(isinstance(e["macs"], int) and 0 <= e["top1"] <= e["top5"] <= 1 for e in anytime["exits"])
    budgeted = json.load(open(os.path.join(out, "budgeted.json")))
    assert len(budgeted["points"]) == 39
    assert {"q", "avg_macs", "top1", "thresholds", "exit_counts"} <= set(budgeted["points"][0])
    assert sum(budgeted["points"][0]["exit_counts"]) == 300
    for name in ("anytime.png", "budgeted.png", "anytime.csv", "budgeted.csv", "calibration.json", "budget.json"):
        assert os.path.exists(os.path.join(out, name)), name
    assert summary["budget"]["val_avg_macs"] <= 1.0e6

    # The second evaluation reads the cached logits: no model is loaded.
    monkeypatch.setattr(runs, "load_checkpoint", lambda *a, **k: pytest.fail("cache not used"))
    report.evaluate_run(eval_run, verbose=0)


def _evaluate(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), *args],
                          capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)


def test_bad_runs_fail_clearly(eval_run, tmp_path):
    from tf_fusionnet.evaluation import report
    from tf_fusionnet.runs.reading import RunError
    from tf_fusionnet.presets import build_model

    missing = _evaluate("--run", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "no such run directory" in missing.stderr

    other = tmp_path / "other"
    shutil.copytree(eval_run, other)
    shutil.rmtree(other / "eval", ignore_errors=True)
    build_model("msdnet-tiny").save(other / "model.keras")
    with pytest.raises(RunError, match="not the 'fusionnet-tiny' model"):
        report.evaluate_run(str(other), verbose=0)

    moved = tmp_path / "moved"
    shutil.copytree(eval_run, moved)
    shutil.rmtree(moved / "eval", ignore_errors=True)
    split = json.loads((moved / "split.json").read_text())
    split["train_fingerprint"] = "0" * 64
    (moved / "split.json").write_text(json.dumps(split))
    result = _evaluate("--run", str(moved))
    assert result.returncode == 1 and "other training data" in result.stderr
