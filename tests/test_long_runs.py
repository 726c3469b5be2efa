"""Issue 44: the compact carry, the paper-regime plan, the precision rule and the official schedule."""

import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from cpu30 import paper300  # noqa: E402
from cpu30.jobs import train_command  # noqa: E402


def test_bfloat16_bits_round_to_nearest_even():
    from tf_fusionnet.runs.compact import from_bfloat16_bits, to_bfloat16_bits

    x = np.array([1.0, -2.5, 3.14159265, 1e-20, 65504.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8], np.float32)
    y = from_bfloat16_bits(to_bfloat16_bits(x))
    assert np.all(np.abs(y - x) <= np.abs(x) * 2 ** -8)
    assert y[5] == 1.0 and y[6] == 1 + 2 ** -6  # ties go to the even mantissa
    assert y[0] == 1.0 and y[1] == -2.5


def test_a_compact_backup_resumes_the_same_model_and_step(tmp_path):
    """Compact, expand and load: the same predictions within bfloat16 rounding, float32 variables,
    the optimizer's step (the schedule's place) kept and its momentum zero; about half the size of
    the weights alone and a quarter of the full backup."""
    import keras

    from tf_fusionnet.runs.compact import compact_weights, expand_weights, is_compact

    def build():
        model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(512), keras.layers.BatchNormalization(),
                                  keras.layers.Dense(512), keras.layers.Dense(3)])
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="mse")
        return model

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 64)).astype(np.float32), rng.normal(size=(64, 3)).astype(np.float32)
    model = build()
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    full, compact, expanded = (str(tmp_path / n) for n in ("full.weights.h5", "c.h5", "e.weights.h5"))
    model.save_weights(full)
    compact_weights(full, compact)
    assert is_compact(compact) and not is_compact(full)
    assert os.path.getsize(compact) < 0.3 * os.path.getsize(full)
    expand_weights(compact, expanded)
    resumed = build()
    resumed.optimizer.build(resumed.trainable_variables)
    resumed.load_weights(expanded)
    assert all(v.dtype == "float32" for v in resumed.weights)
    assert int(resumed.optimizer.iterations.numpy()) == 8
    momenta = [v for v in resumed.optimizer.variables if len(v.shape) > 0]
    assert momenta and not any(np.any(keras.ops.convert_to_numpy(v)) for v in momenta)
    np.testing.assert_allclose(resumed.predict(x, verbose=0), model.predict(x, verbose=0), rtol=0.02, atol=0.02)
    with pytest.raises(ValueError, match="not a compact weights file"):
        expand_weights(full, str(tmp_path / "x.weights.h5"))


def test_the_paper_plan_runs_the_issue_s_recipes_in_order():
    jobs = paper300.paper_jobs("machine", data_dir="/data")
    assert [j.phase for j in jobs] == ["cifar100"] * 2 + ["cifar10"] * 2 + ["official"] + ["cifar100_seed1"] * 2
    assert [j.preset for j in jobs[:2]] == ["fusionnet-cifar", "msdnet-cifar-anytime"]
    s = {"data": "unused", "batch": 1, "precision": "float32", "val_size": 5000}
    cmd = train_command(jobs[0], s, "/work")
    flag = lambda c, name: c[c.index(name) + 1]
    assert flag(cmd, "--dataset") == "/data/cifar100-webp.tar.gz" and flag(cmd, "--epochs") == "300"
    assert flag(cmd, "--batch_size") == "512" and flag(cmd, "--lr") == "0.1" and flag(cmd, "--warmup_epochs") == "20"
    assert flag(cmd, "--mix_prob") == "1.0" and flag(cmd, "--precision") == "machine"
    assert flag(cmd, "--val_size") == "5000" and "--label_smoothing" not in cmd  # train.py's default, 0.1
    assert flag(cmd, "--intra_op_threads") == "2" and "--intra_op_threads" not in train_command(jobs[1], s, "/work")
    official = train_command(jobs[4], s, "/work")
    assert flag(official, "--batch_size") == "64" and flag(official, "--warmup_epochs") == "0"
    assert flag(official, "--lr_schedule") == "step" and flag(official, "--lr_milestones") == "150,225"
    assert flag(official, "--label_smoothing") == "0" and flag(official, "--mix_prob") == "0.0"
    assert [j.seed for j in jobs[5:]] == [1, 1] and jobs[2].data.endswith("cifar10-webp.tar.gz")
    assert len({j.name for j in jobs}) == len(jobs)


def _rows(mean_exit: float, last: float) -> list[dict]:
    return [{"val_exit_1_accuracy": str(2 * mean_exit - last), "val_exit_2_accuracy": str(last)}]


def test_precision_rule_takes_bfloat16_only_inside_the_float32_prediction_interval():
    refs = [_rows(0.868, 0.874), _rows(0.867, 0.876), _rows(0.868, 0.875)]
    inside = paper300.precision_choice(_rows(0.8675, 0.875), refs)
    assert inside["precision"] == "machine" and all(c["within"] for c in inside["checks"].values())
    low, high = inside["checks"]["val_top1_last_exit"]["interval"]
    # mean 0.875, sd 0.001: t(0.975, 2) * sd * sqrt(4/3) = 0.00497
    assert high - 0.875 == pytest.approx(4.3027 * 0.001 * (4 / 3) ** 0.5, rel=1e-3) and low < 0.875 < high
    assert paper300.precision_choice(_rows(0.860, 0.875), refs)["precision"] == "float32"
    assert paper300.precision_choice(_rows(0.8675, 0.890), refs)["precision"] == "float32"


def test_status_gives_seconds_per_epoch_on_this_cpu_and_estimates_unstarted_runs(tmp_path):
    jobs = paper300.paper_jobs("machine", data_dir="/data")[:2]
    fusion, msdnet = jobs
    seed1 = paper300.paper_jobs("machine", data_dir="/data")[5]
    run = tmp_path / fusion.name
    run.mkdir()
    rows = ["1,500,slow cpu", "2,100,this cpu", "3,120,this cpu"]
    (run / "log.csv").write_text("epoch,epoch_seconds,cpu_model\n" + "\n".join(rows) + "\n")
    lines = paper300.paper_status([fusion, msdnet, seed1], str(tmp_path), {}, None, "this cpu")
    assert "3 of 300 epochs, 110 s per epoch, 9.1 h left" in lines[0]
    assert "time per epoch not known yet" in lines[1]
    assert "estimated from a run of the same model" in lines[2] and "9.2 h left" in lines[2]
    assert lines[-1].startswith("all: 18.2 h left on this machine (this cpu), not counting 1 runs")


def test_step_schedule_divides_the_rate_at_the_milestones():
    from tf_fusionnet.training.config import TrainConfig, parse_milestones
    from tf_fusionnet.training.trainer import make_optimizer

    config = TrainConfig(epochs=10, lr=0.1, warmup_epochs=0, lr_schedule="step", lr_milestones="4,7")
    config.validate()
    schedule = make_optimizer(config, steps_per_epoch=5)._learning_rate
    rates = [float(schedule(step)) for step in (0, 19, 20, 34, 35, 49)]
    assert rates == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    with pytest.raises(ValueError, match="--warmup_epochs must be 0 with --lr_schedule step"):
        TrainConfig(lr_schedule="step", warmup_epochs=20).validate()
    TrainConfig(lr_schedule="step").validate()  # the default warmup (the paper's share) is none for step
    with pytest.raises(ValueError, match="below --epochs"):
        parse_milestones("150,300", 300)
    with pytest.raises(ValueError, match="increasing"):
        parse_milestones("225,150")


def test_machine_precision_is_chosen_again_on_resume():
    from tf_fusionnet.training.precision import machine_precision, resolve_precision

    previous = {"precision": "float32"}
    assert resolve_precision("machine", previous) == machine_precision()
    assert resolve_precision("auto", previous) == "float32"
