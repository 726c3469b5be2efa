"""The 30-epoch comparison's report: pilot choice on validation, matched-cost tables, noise and verdicts."""

import subprocess
import json

import numpy as np

import pytest
from conftest import benchmarks_on_path

benchmarks_on_path()
import common  # noqa: E402
import cpu30.carry as carrying  # noqa: E402
import cpu30.jobs as plan  # noqa: E402
import cpu30.report as report  # noqa: E402
import cpu30.results as kept_results  # noqa: E402
from tf_fusionnet.evaluation import curves  # noqa: E402


def _job(name, phase, preset, exits, epochs=30, seed=0, budgeted=(), test_images=10000):
    return {"name": name, "phase": phase, "preset": preset, "epochs": epochs, "seed": seed, "lr": 0.05,
            "test_images": test_images,
            "mix_prob": 0.0, "anytime": [{"exit": i + 1, "macs": m * 1e6, "top1": a} for i, (m, a) in enumerate(exits)],
            "budgeted": [{"avg_macs": m * 1e6, "top1": a} for m, a in budgeted]}


def test_verdict_reads_against_noise():
    assert curves.threshold_verdict(0.02, 0.01) == "supported"
    assert curves.threshold_verdict(-0.02, 0.01) == "not supported"
    assert curves.threshold_verdict(0.005, 0.01) == "within noise"
    assert curves.threshold_verdict(None, 0.01) == "not measured"


def test_report_tables_noise_and_claims(tmp_path):
    fusion = [(17, 0.80), (25, 0.82), (34, 0.84), (63, 0.86)]
    msdnet = [(15, 0.78), (25, 0.80), (37, 0.82), (76, 0.83)]
    jobs = {
        "pilot-lr0.05-mix0.0": {"name": "pilot-lr0.05-mix0.0", "phase": "pilot", "preset": "msdnet-cifar-anytime",
                                "epochs": 5, "lr": 0.05, "mix_prob": 0.0, "val_top1_mean_over_exits": 0.7,
                                "val_top1_last_exit": 0.72},
        "fusionnet-cifar": _job("fusionnet-cifar", "main", "fusionnet-cifar", fusion,
                                budgeted=[(20, 0.81), (40, 0.85), (60, 0.86)]),
        "msdnet-cifar-anytime": _job("msdnet-cifar-anytime", "main", "msdnet-cifar-anytime", msdnet,
                                     budgeted=[(20, 0.79), (40, 0.82), (60, 0.83)]),
        "fusionnet-cifar-10ep": _job("fusionnet-cifar-10ep", "ablation", "fusionnet-cifar",
                                     [(17, 0.70), (63, 0.76)], epochs=10),
        "msdnet-cifar-anytime-10ep": _job("msdnet-cifar-anytime-10ep", "ablation", "msdnet-cifar-anytime",
                                          [(15, 0.69), (76, 0.74)], epochs=10),
        "fusionnet-cifar-nofusion-10ep": _job("fusionnet-cifar-nofusion-10ep", "ablation",
                                              "fusionnet-cifar-nofusion", [(16, 0.69), (60, 0.74)], epochs=10),
        "fusionnet-cifar-10ep-seed1": _job("fusionnet-cifar-10ep-seed1", "seed", "fusionnet-cifar",
                                           [(17, 0.705), (63, 0.755)], epochs=10, seed=1),
        "msdnet-cifar-anytime-10ep-seed1": _job("msdnet-cifar-anytime-10ep-seed1", "seed", "msdnet-cifar-anytime",
                                                [(15, 0.688), (76, 0.742)], epochs=10, seed=1),
    }
    summary = {"jobs": jobs, "baseline_preset": "msdnet-cifar-anytime",
               "recipe": {"lr": 0.05, "mix_prob": 0.0, "chosen_by": "pilot-lr0.05-mix0.0"},
               "paired": {"fusionnet-cifar": [{"exit": 1, "top1_difference": 0.02, "standard_error": 0.003},
                                              {"exit": 2, "top1_difference": 0.02, "standard_error": 0.004}]}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    text = report.write_report(str(tmp_path))
    assert (tmp_path / "results.md").read_text() == text
    assert "Chosen: peak lr 0.05, mix prob 0.0" in text
    assert "![ablation, anytime](ablation_anytime.png)" in text
    assert (tmp_path / "ablation_anytime.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # MSDNet interpolated at FusionNet's exits: 0.784 at 17M, 0.80 at 25M, 0.815 at 34M, 0.8267 at 63M.
    assert "| 80.00, 82.00, 84.00, 86.00 | +1.60, +2.00, +2.50, +3.33 |" in text
    noise_line = next(line for line in text.splitlines() if "read as real only beyond" in line)
    assert "0.80 points" in noise_line  # two paired SEs (0.8) beat the largest seed spread (0.5)
    assert "up to 0.50 points" in text
    claims = text[text.index("## The paper's claims"):]
    last_exit = next(line for line in claims.splitlines() if line.startswith("- Last exit"))
    assert "17.1% cheaper than MSDNet's" in last_exit and last_exit.endswith(": supported.")
    assert "Budgeted ahead at every budget: +2.00 at 20M" in claims
    # 16M lies below the full model's first exit (not extrapolated); 60M: 0.74 against 0.7561.
    assert ("- Gain of the fusion layer (`fusionnet-cifar-nofusion` against `fusionnet-cifar-10ep`): "
            "+1.61 points over 1 exits: supported.") in claims
    # No stem ablation in this summary: the same-order claim cannot be read.
    assert "the larger at most 3x the smaller, both beyond noise): not measured." in claims
    assert "gain read on MSDNet" not in claims  # no msdnet-cifar-fusion run either


def test_contribution_gains_and_the_same_order_claim():
    full = _job("f", "ablation", "fusionnet-cifar", [(20, 0.80), (60, 0.84)], epochs=10)
    without = _job("n", "ablation", "fusionnet-cifar-nofusion", [(10, 0.70), (20, 0.79), (40, 0.80), (70, 0.9)])
    gain, n = curves.contribution_gain(without, full)  # 20M: 0.80 - 0.79; 40M: 0.82 - 0.80
    assert n == 2 and gain == pytest.approx(0.015)
    added = _job("m", "ablation", "msdnet-cifar-fusion", [(20, 0.81), (60, 0.86)])
    assert curves.contribution_gain(added, full, removes=False)[0] == pytest.approx(0.015)
    assert curves.contribution_gain(_job("x", "ablation", "p", [(70, 0.9)]), full) is None
    names = ("fusion", "stem")
    assert curves.same_order_verdict(0.010, 0.025, 0.005, names) == "supported (ratio 2.5)"
    assert curves.same_order_verdict(0.004, 0.025, 0.005, names).startswith("within noise (fusion:")
    assert curves.same_order_verdict(0.010, 0.040, 0.005, names) == "not supported (one gain is 4.0x the other)"
    assert curves.same_order_verdict(-0.010, 0.040, 0.005, names).startswith("not supported (fusion costs")
    assert curves.same_order_verdict(None, 0.040, 0.005, names) == "not measured"


def test_ranet_finishing_last_does_not_become_the_baseline(tmp_path):
    """RANet trains last, so it is the last main run in summary.json; the claims and the ablation
    are still read against MSDNet, and the ablation's same-order claim is decided."""
    jobs = {
        "fusionnet-cifar": _job("fusionnet-cifar", "main", "fusionnet-cifar", [(17, 0.80), (63, 0.86)]),
        "msdnet-cifar-anytime": _job("msdnet-cifar-anytime", "main", "msdnet-cifar-anytime",
                                     [(15, 0.78), (76, 0.83)]),
        "fusionnet-cifar-10ep": _job("fusionnet-cifar-10ep", "ablation", "fusionnet-cifar",
                                     [(17, 0.70), (63, 0.76)], epochs=10),
        "msdnet-cifar-anytime-10ep": _job("msdnet-cifar-anytime-10ep", "ablation", "msdnet-cifar-anytime",
                                          [(15, 0.69), (76, 0.74)], epochs=10),
        "fusionnet-cifar-nofusion-10ep": _job("fusionnet-cifar-nofusion-10ep", "ablation",
                                              "fusionnet-cifar-nofusion", [(20, 0.69), (60, 0.74)], epochs=10),
        "fusionnet-cifar-msdnetstem-10ep": _job("fusionnet-cifar-msdnetstem-10ep", "ablation",
                                                "fusionnet-cifar-msdnetstem", [(20, 0.68), (60, 0.73)], epochs=10),
        "msdnet-cifar-fusion-10ep": _job("msdnet-cifar-fusion-10ep", "ablation", "msdnet-cifar-fusion",
                                         [(20, 0.774), (60, 0.807)], epochs=10),
        "ranet-cifar": _job("ranet-cifar", "main", "ranet-cifar", [(16, 0.79), (95, 0.85)]),
    }
    (tmp_path / "summary.json").write_text(json.dumps({"jobs": jobs, "baseline_preset": "msdnet-cifar-anytime"}))
    claims = report.write_report(str(tmp_path)).split("## The paper's claims")[1]
    assert claims.index("Against MSDNet (`msdnet-cifar-anytime`)") < claims.index("Against RANet (`ranet-cifar`)")
    assert "Against FusionNet" not in claims and "`fusionnet-cifar` against" not in claims
    # RANet first in summary.json: FusionNet is still the model whose claims are read.
    first = {"ranet-cifar": jobs["ranet-cifar"], **{k: v for k, v in jobs.items() if k != "ranet-cifar"}}
    (tmp_path / "summary.json").write_text(json.dumps({"jobs": first, "candidate_preset": "fusionnet-cifar",
                                                       "baseline_preset": "msdnet-cifar-anytime"}))
    assert "Against RANet (`ranet-cifar`)" in report.write_report(str(tmp_path))
    # Full FusionNet at 20M: 0.7039, at 60M: 0.7561; fusion gain 1.50, stem gain 2.50 points.
    assert "Gain of the fusion layer (`fusionnet-cifar-nofusion` against `fusionnet-cifar-10ep`): +1.50" in claims
    assert "Gain of the efficient stem (with the width it pays for) (`fusionnet-cifar-msdnetstem` against" in claims
    assert "both beyond noise): supported (ratio 1.7)." in claims
    # Read on MSDNet (0.6941 at 20M, 0.7269 at 60M), the fusion layer gains 8.00 points: 3.2x the stem's.
    assert ("- The same, with the fusion layer's gain read on MSDNet (`msdnet-cifar-fusion`): "
            "not supported (one gain is 3.2x the other).") in claims


def test_claims_are_read_against_ranet_too(tmp_path):
    """With RANet among the main models, each claim is also read against it, with the paper's own
    cost share for RANet (32% cheaper last exit, not MSDNet's 15%)."""
    fusion = [(17, 0.80), (63, 0.86)]
    jobs = {
        "fusionnet-cifar": _job("fusionnet-cifar", "main", "fusionnet-cifar", fusion),
        "ranet-cifar": _job("ranet-cifar", "main", "ranet-cifar", [(16, 0.79), (95, 0.85)]),
        "msdnet-cifar-anytime": _job("msdnet-cifar-anytime", "main", "msdnet-cifar-anytime",
                                     [(15, 0.78), (76, 0.83)]),
    }
    (tmp_path / "summary.json").write_text(json.dumps({"jobs": jobs, "baseline_preset": "msdnet-cifar-anytime"}))
    text = report.write_report(str(tmp_path))
    assert text.startswith("# CIFAR-10, 30 epochs: FusionNet against RANet and MSDNet (issue 17)\n")
    claims = text.split("## The paper's claims")[1]
    assert "Against RANet (`ranet-cifar`)" in claims and "Against MSDNet (`msdnet-cifar-anytime`)" in claims
    last = [line for line in claims.splitlines() if line.startswith("- Last exit")]
    assert "17.1% cheaper than MSDNet's" in last[0]
    assert "33.7% cheaper than RANet's (63.00M against 95.00M) at +1.00 points" in last[1]
    slim = dict(jobs, **{"ranet-cifar": _job("ranet-cifar", "main", "ranet-cifar", [(16, 0.79), (80, 0.85)])})
    (tmp_path / "summary.json").write_text(json.dumps({"jobs": slim, "baseline_preset": "msdnet-cifar-anytime"}))
    assert "not supported (not 32% cheaper)" in report.write_report(str(tmp_path))


def test_pilot_score_uses_validation_columns_only():
    rows = [{"epoch": "1", "val_exit_2_accuracy": "0.5", "val_exit_1_accuracy": "0.4", "exit_1_accuracy": "0.9",
             "val_exit_10_accuracy": "0.6"}]
    score = plan.pilot_score(rows)
    assert score["val_top1_per_exit"] == [0.4, 0.5, 0.6]
    assert score["val_top1_last_exit"] == 0.6
    assert score["val_top1_mean_over_exits"] == pytest.approx(0.5)


def test_warmup_follows_the_papers_share():
    assert plan.Job("a", "main", "p", 30, 0, 0.1, 0.0).warmup_epochs == 2
    assert plan.Job("a", "main", "p", 10, 0, 0.1, 0.0).warmup_epochs == 1
    assert plan.Job("a", "main", "p", 300, 0, 0.1, 0.0).warmup_epochs == 20


def test_run_order_pair_first_its_second_seed_next_and_ranet_last():
    settings = dict(main=["fusionnet-cifar", "ranet-cifar", "msdnet-cifar-anytime"], epochs=30, ablation_epochs=10,
                    seed_epochs=30, ablations=("fusionnet-cifar-nofusion", "msdnet-cifar-fusion"))
    jobs = plan.later_jobs(settings, 0.05, 0.0)
    assert [j.name for j in jobs] == [
        "fusionnet-cifar", "msdnet-cifar-anytime", "fusionnet-cifar-30ep-seed1", "msdnet-cifar-anytime-30ep-seed1",
        "fusionnet-cifar-10ep", "msdnet-cifar-anytime-10ep", "fusionnet-cifar-nofusion-10ep",
        "msdnet-cifar-fusion-10ep", "ranet-cifar"]
    assert [(phase, len(group)) for phase, group in plan.run_groups(jobs)] == [
        ("main", 2), ("seed", 2), ("ablation", 4), ("main", 1)]
    assert [j.seed for j in jobs[2:4]] == [1, 1]
    assert jobs[-1].phase == "main" and jobs[-1].epochs == 30 and jobs[-1].warmup_epochs == 2


def test_status_lists_every_run_and_the_time_left_at_the_recent_speed(tmp_path):
    settings = dict(main=["fusionnet-cifar", "msdnet-cifar-anytime"], epochs=5, ablation_epochs=1, seed_epochs=1,
                    ablations=(), pilot_preset="msdnet-cifar-anytime", pilot_epochs=1,
                    pilot_lrs=["0.05", "0.1"], pilot_mix=["0", "0.5"])
    work = tmp_path / "work"
    for name, seconds in (("fusionnet-cifar", [900, 900, 900, 300, 300]), ("msdnet-cifar-anytime", [300])):
        (work / name).mkdir(parents=True)
        (work / name / "log.csv").write_text(
            "epoch,epoch_seconds\n" + "".join(f"{i + 1},{t}\n" for i, t in enumerate(seconds)))
    pilots = {j.name: {} for j in plan.pilot_jobs(settings)}
    text = plan.status(settings, str(work), {"jobs": pilots})
    assert "later runs are listed once the pilot has chosen" in text
    summary = {"jobs": {**pilots, "fusionnet-cifar": {}}, "recipe": {"lr": 0.05, "mix_prob": 0.0}}
    lines = plan.status(settings, str(work), summary).splitlines()
    assert lines[4].split() == ["main", "fusionnet-cifar", "finished,", "results", "in", "--out"]
    assert lines[5].split() == ["main", "msdnet-cifar-anytime", "1", "of", "5", "epochs"]
    assert lines[6].split()[-2:] == ["not", "started"]
    (work / "fusionnet-cifar-1ep-seed1").mkdir()  # a run that train.py has begun
    assert plan.status(settings, str(work), summary).splitlines()[6].endswith("started, no epoch finished yet")
    # 4 pilot + 5 + 1 epochs done; 4 + 1 + 1 + 1 + 1 left at the median of the last 5 epochs, 300 s
    # (the median of all six, slowed by the first ones, is 600 s).
    assert lines[-1].startswith("all: 10 of 18 epochs done, about 0.7 h left at 300 s per epoch")


def _write_weights(path, value: float) -> None:
    """A Keras-shaped .weights.h5: one layer's kernel filled with ``value``, SGD's step and momentum."""
    import h5py
    import numpy as np

    with h5py.File(path, "w") as f:
        f.create_dataset("layers/dense/vars/0", data=np.full((4, 3), value, np.float32))
        f.create_dataset("optimizer/vars/0", data=np.int64(7))
        f.create_dataset("optimizer/vars/1", data=np.full((4, 3), 0.5, np.float32))


def _kernel(path) -> float:
    import h5py

    with h5py.File(path, "r") as f:
        return float(f["layers/dense/vars/0"][0, 0])


def _fake_run(run, epochs, weights=1.0):
    """A run folder as train.py leaves it after ``epochs`` finished epochs (files only)."""
    (run / "backup").mkdir(parents=True, exist_ok=True)
    _write_weights(run / "backup" / "latest.weights.h5", weights)
    (run / "backup" / "training_metadata.json").write_text(json.dumps({"epoch": epochs, "batch": -1}))
    (run / "log.csv").write_text("epoch,epoch_seconds\n" + "".join(f"{i + 1},300\n" for i in range(epochs)))
    (run / "config.json").write_text(json.dumps({"train": {"epochs": 30}}))
    (run / "best.keras.json").write_text(json.dumps({"epoch": epochs, "value": 0.5}))
    (run / "best.keras").write_bytes(b"best")
    (run / "model.keras").write_bytes(b"last")


def test_carry_copies_one_epoch_and_resumes_a_lost_or_shorter_run(tmp_path):
    run, carried = tmp_path / "work" / "msdnet", tmp_path / "carry" / "msdnet"
    _fake_run(run, 3, weights=3.0)
    assert carrying.save_carry(str(run), str(carried), epochs=30) == 3
    assert carrying.epochs_carried(str(carried)) == 3
    # Compact: the weights in bfloat16, the optimizer's step kept, its momentum not.
    assert not (carried / "backup" / "latest.weights.h5").exists()
    assert _kernel(carried / "backup" / "latest.compact.h5") != 3.0
    # Neither model is carried before the last epoch (the backup holds the weights; best is only its record).
    assert not (carried / "model.keras").exists() and not (carried / "best.keras").exists()
    assert (carried / "best.keras.json").exists() and not (tmp_path / "carry" / "msdnet.partial").exists()

    # A fresh machine: the run folder is gone, and comes back from the carried state.
    lost = tmp_path / "fresh" / "msdnet"
    assert carrying.restore_carry(str(carried), str(lost)) == 3
    import h5py

    with h5py.File(lost / "backup" / "latest.weights.h5", "r") as f:
        assert f["layers/dense/vars/0"].dtype.name == "float32" and float(f["layers/dense/vars/0"][0, 0]) == 3.0
        assert int(f["optimizer/vars/0"][()]) == 7 and not f["optimizer/vars/1"][()].any()
    assert len(carrying.log_rows(str(lost))) == 3
    # A run that is further along than the carried state is left alone.
    _fake_run(run, 5, weights=5.0)
    assert carrying.restore_carry(str(carried), str(run)) == 0
    assert _kernel(run / "backup" / "latest.weights.h5") == 5.0
    # A shorter run is brought forward; its own models are of an older epoch and go.
    short = tmp_path / "short" / "msdnet"
    _fake_run(short, 1, weights=1.0)
    assert carrying.restore_carry(str(carried), str(short)) == 3
    assert _kernel(short / "backup" / "latest.weights.h5") == 3.0
    assert not (short / "model.keras").exists() and not (short / "best.keras").exists()


def test_carry_takes_model_keras_once_the_last_epoch_is_done(tmp_path):
    run, carried = tmp_path / "run", tmp_path / "carried"
    _fake_run(run, 30)
    carrying.save_carry(str(run), str(carried), epochs=30)
    assert (carried / "model.keras").read_bytes() == b"last"


def test_carry_never_mixes_two_epochs(tmp_path):
    """Mid epoch end (the log has epoch 4, the backup still 3) nothing is copied: the copy waits."""
    run = tmp_path / "run"
    _fake_run(run, 3)
    (run / "log.csv").write_text("epoch,epoch_seconds\n" + "".join(f"{i + 1},300\n" for i in range(4)))
    with pytest.raises(RuntimeError, match="did not agree"):
        carrying.save_carry(str(run), str(tmp_path / "carried"), epochs=30, timeout_s=0.0, poll_s=0.0)
    assert not (tmp_path / "carried").exists()


def test_status_counts_carried_epochs(tmp_path):
    settings = dict(main=["fusionnet-cifar", "msdnet-cifar-anytime"], epochs=5, ablation_epochs=1, seed_epochs=1,
                    ablations=(), pilot_preset="msdnet-cifar-anytime", pilot_epochs=1,
                    pilot_lrs=["0.05"], pilot_mix=["0"])
    _fake_run(tmp_path / "carry" / "msdnet-cifar-anytime", 3)
    summary = {"jobs": {"pilot-lr0.05-mix0": {}, "fusionnet-cifar": {}}, "recipe": {"lr": 0.05, "mix_prob": 0.0}}
    text = plan.status(settings, str(tmp_path / "work"), summary, str(tmp_path / "carry"))
    assert "msdnet-cifar-anytime                     not started (3 carried in --carry, resumed from there)" in text
    # Done: the pilot (1), FusionNet (5) and MSDNet's 3 carried; left: 2 of MSDNet and 4 one-epoch runs.
    assert text.splitlines()[-1] == "all: 9 of 15 epochs done, about 0.5 h left at 300 s per epoch (the last epochs'; " \
                                    "larger models take longer)"


def _predictions(correct_per_exit):
    """Predictions whose correctness per exit is ``correct_per_exit`` (lists of bools, label 0)."""
    correct = np.asarray(correct_per_exit, bool)
    return {"predicted": np.where(correct, 0, 1).astype(np.uint8),
            "confidence": np.full(correct.shape, 0.5, np.float16), "labels": np.zeros(correct.shape[1], np.uint8)}


def test_runs_pair_from_their_kept_predictions_after_the_run_folders_are_gone(tmp_path):
    """Paired errors come from out/NAME/test_predictions.npz; a run without them is left unpaired,
    and the report says why instead of showing a made-up error."""
    from common import load_predictions, save_predictions

    a = _predictions([[1, 1, 0, 1], [1, 1, 1, 1]])
    base = _predictions([[1, 0, 0, 0], [1, 1, 1, 0]])
    for name, preds in (("fusionnet-cifar-30ep-seed1", a), ("msdnet-cifar-anytime-30ep-seed1", base)):
        save_predictions(str(tmp_path / name / kept_results.PREDICTIONS), preds)
    kept = load_predictions(str(tmp_path / "fusionnet-cifar-30ep-seed1" / kept_results.PREDICTIONS))
    assert kept["predicted"].dtype == np.uint8 and np.array_equal(kept["predicted"], a["predicted"])
    jobs = [plan.Job(n, "seed", p, 30, 1, 0.05, 0.0) for n, p in (
        ("fusionnet-cifar-30ep-seed1", "fusionnet-cifar"), ("msdnet-cifar-anytime-30ep-seed1", "msdnet-cifar-anytime"))]
    paired = {}
    assert kept_results.pair_phase(jobs, str(tmp_path), "msdnet-cifar-anytime", paired) == ["fusionnet-cifar-30ep-seed1"]
    assert list(paired) == ["fusionnet-cifar-30ep-seed1"]
    # A restart pairs nothing new, so the driver has nothing to commit.
    assert kept_results.pair_phase(jobs, str(tmp_path), "msdnet-cifar-anytime", paired) == []
    first = paired["fusionnet-cifar-30ep-seed1"][0]
    assert first["top1_difference"] == pytest.approx(0.5)  # 3 of 4 against 1 of 4
    assert first["standard_error"] == pytest.approx(np.std([0, 1, 0, 1], ddof=1) / 2)
    # The main pair's FusionNet kept nothing: nothing is paired, and the report names it.
    main = [plan.Job(p, "main", p, 30, 0, 0.05, 0.0) for p in ("fusionnet-cifar", "msdnet-cifar-anytime")]
    save_predictions(str(tmp_path / "msdnet-cifar-anytime" / kept_results.PREDICTIONS), base)
    assert kept_results.pair_phase(main, str(tmp_path), "msdnet-cifar-anytime", paired) == []
    assert "fusionnet-cifar" not in paired
    with pytest.raises(ValueError, match="different images"):
        common.paired_errors_of(a, {**base, "labels": np.ones(4, np.uint8)})

    exits = [(17, 0.80), (63, 0.86)]
    summary = {"jobs": {"fusionnet-cifar": _job("fusionnet-cifar", "main", "fusionnet-cifar", exits),
                        "msdnet-cifar-anytime": _job("msdnet-cifar-anytime", "main", "msdnet-cifar-anytime", exits),
                        "fusionnet-cifar-30ep-seed1": _job("fusionnet-cifar-30ep-seed1", "seed", "fusionnet-cifar",
                                                           exits, seed=1),
                        "msdnet-cifar-anytime-30ep-seed1": _job("msdnet-cifar-anytime-30ep-seed1", "seed",
                                                                "msdnet-cifar-anytime", exits, seed=1)},
               "paired": paired, "baseline_preset": "msdnet-cifar-anytime", "candidate_preset": "fusionnet-cifar",
               "cascade": {"fusionnet-cifar-30ep-seed1 int8": [{"budget_macs": 2e7, "mean_ms": 1.0, "mean_macs": 2e7,
                                                                "top1": 0.8}],
                           "msdnet-cifar-anytime int8": [{"budget_macs": 2e7, "mean_ms": 2.0, "mean_macs": 2e7,
                                                          "top1": 0.8}]},
               "cascade_measured_on": {"fusionnet-cifar-30ep-seed1 int8": {
                   "cpu_model": "AMD EPYC", "simd_flags": ["avx2", "avx512_vnni"], "at": "2026-12-02 09:54 UTC"}}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    text = report.write_report(str(tmp_path))
    # Each cascade row says where and when it was timed; a sweep from before the record says "-".
    assert "| 80.00 | AMD EPYC (VNNI), 2026-12-02 09:54 UTC |" in text
    assert "| msdnet-cifar-anytime int8 | 2.00 | - | - | - | - | 80.00 | - |" in text
    assert report.CASCADE_TIMING_NOTE in text
    assert "Paired SE \"-\": `fusionnet-cifar` kept no per-image test predictions" in text
    assert "| fusionnet-cifar-30ep-seed1 | 30 |" in text and "| 25.00-28.87 |" in text
    assert "Paired standard error of a same-exit test top-1 difference: 25.00 to 28.87 points" in text
    # The plots are drawn from summary.json alone (no run folder here) and linked.
    for name in ("anytime.png", "budgeted.png", "cascade_ms.png"):
        assert (tmp_path / name).stat().st_size > 1000 and f"]({name})" in text


def test_git_keeps_every_carried_file():
    """The checkout ignores *.keras; a carried model.keras must still be committed, or a finished
    but unevaluated run would come back without the model its evaluation reads."""
    import os
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if subprocess.run(["git", "rev-parse", "--git-dir"], cwd=root, capture_output=True).returncode:
        pytest.skip("not a git checkout: nothing is committed from here")
    names = [os.path.join("benchmarks", "carry", "cifar10_cpu30", "run", n)
             for n in (*carrying.CARRIED, carrying.COMPACT_WEIGHTS, "model.keras")]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *names], cwd=root, capture_output=True, text=True)
    assert ignored.returncode == 1 and not ignored.stdout, ignored.stdout


def test_without_paired_errors_the_noise_is_the_unpaired_bound_and_without_any_measure_no_verdict(tmp_path):
    """The main pair finished, but FusionNet kept no per-image predictions and no second seed has
    run: the claims are read against the (larger) unpaired error, never against zero noise."""
    jobs = {"fusionnet-cifar": _job("fusionnet-cifar", "main", "fusionnet-cifar", [(17, 0.80), (63, 0.90)]),
            "msdnet-cifar-anytime": _job("msdnet-cifar-anytime", "main", "msdnet-cifar-anytime",
                                         [(15, 0.78), (76, 0.83)])}
    (tmp_path / "summary.json").write_text(json.dumps({"jobs": jobs, "baseline_preset": "msdnet-cifar-anytime"}))
    text = report.write_report(str(tmp_path))
    # sqrt(0.8 * 0.2 / 1e4 + 0.78 * 0.22 / 1e4) = 0.5758%, sqrt(0.9 * 0.1 / 1e4 + 0.83 * 0.17 / 1e4) = 0.4807%
    assert "the unpaired bound" in text and "0.48 to 0.58 points" in text
    assert "real only beyond 1.15 points" in text
    assert "at +7.00 points: supported" in text  # last exit: 90 against 83, far beyond 1.15
    for entry in jobs.values():
        del entry["test_images"]
    (tmp_path / "summary.json").write_text(json.dumps({"jobs": jobs, "baseline_preset": "msdnet-cifar-anytime"}))
    text = report.write_report(str(tmp_path))
    assert "No verdict yet: no measure of the noise" in text and "supported" not in text


def test_carry_at_is_the_next_such_time():
    import datetime

    now = datetime.datetime(2026, 12, 2, 8, 0).timestamp()
    assert carrying.seconds_until("08:22", now) == 22 * 60
    assert carrying.seconds_until("07:59", now) == 24 * 3600 - 60  # passed today: tomorrow's
    with pytest.raises(SystemExit, match="HH:MM"):
        carrying.seconds_until("8h22", now)


def test_claims_are_also_read_on_the_mean_of_the_two_seeds(tmp_path):
    """With a second seed of both models, the claims are read once more on the per-model seed means
    (per exit, and at each budget after interpolating each run's budgeted curve)."""
    jobs = {
        "fusionnet-cifar": _job("fusionnet-cifar", "main", "fusionnet-cifar", [(17, 0.80), (63, 0.86)],
                                budgeted=[(20, 0.81), (40, 0.84)]),
        "msdnet-cifar-anytime": _job("msdnet-cifar-anytime", "main", "msdnet-cifar-anytime",
                                     [(15, 0.78), (76, 0.87)], budgeted=[(20, 0.80), (40, 0.84)]),
        "fusionnet-cifar-30ep-seed1": _job("fusionnet-cifar-30ep-seed1", "seed", "fusionnet-cifar",
                                           [(17, 0.81), (63, 0.88)], seed=1, budgeted=[(30, 0.85)]),
        "msdnet-cifar-anytime-30ep-seed1": _job("msdnet-cifar-anytime-30ep-seed1", "seed", "msdnet-cifar-anytime",
                                                [(15, 0.79), (76, 0.87)], seed=1, budgeted=[(20, 0.81), (40, 0.85)]),
    }
    mean = curves.seed_mean([jobs["fusionnet-cifar"], jobs["fusionnet-cifar-30ep-seed1"]])
    assert [e["top1"] for e in mean["anytime"]] == pytest.approx([0.805, 0.87]) and mean["seeds"] == [0, 1]
    # Seed 1's budgeted curve (17M: 0.81, 30M: 0.85, 63M: 0.88) at 20M: 0.8192; seed 0's: 0.81.
    assert mean["budgeted"][0] == {"avg_macs": 20e6, "top1": pytest.approx((0.81 + 0.81 + 0.04 * 3 / 13) / 2)}
    paired = {"fusionnet-cifar-30ep-seed1": [{"exit": 1, "top1_difference": 0.02, "standard_error": 0.002}]}
    (tmp_path / "summary.json").write_text(json.dumps({"jobs": jobs, "baseline_preset": "msdnet-cifar-anytime",
                                                       "paired": paired}))
    claims = report.write_report(str(tmp_path)).split("## The paper's claims")[1]
    # Noise: the seed spread of FusionNet's last exit (2.00 points) beats two paired SEs (0.40).
    # Seed 0's last exit: 86 against 87, within noise; the mean: 87 against 87.
    last = [line for line in claims.splitlines() if line.startswith("- Last exit")]
    assert len(last) == 2 and "at -1.00 points: within noise" in last[0] and "at +0.00 points" in last[1]
    assert claims.index("Mean of seeds 0, 1 of each model") < claims.index(last[1])
    del jobs["msdnet-cifar-anytime-30ep-seed1"]
    (tmp_path / "summary.json").write_text(json.dumps({"jobs": jobs, "baseline_preset": "msdnet-cifar-anytime"}))
    assert "Mean of seeds" not in report.write_report(str(tmp_path))


def test_each_run_records_the_machine_it_finished_on(tmp_path):
    """summary.json's top-level machine is rewritten by every invocation, so a run's seconds keep
    their own CPU record."""
    job = plan.Job("pilot-x", "pilot", "msdnet-cifar-anytime", 1, 0, 0.05, 0.0)
    (tmp_path / "work" / job.name).mkdir(parents=True)
    (tmp_path / "work" / job.name / "log.csv").write_text("epoch,epoch_seconds,val_exit_1_accuracy\n1,12.5,0.4\n")
    entry = kept_results.collect(job, str(tmp_path / "work"), str(tmp_path / "out"))
    assert entry["train_seconds"] == 12.5 and entry["finished_on"]["cpu_count"] >= 1
    assert entry["finished_on"]["cpu_model"] and "simd_flags" in entry["finished_on"]


def test_commit_skips_an_empty_untracked_folder_and_commits_deletions(tmp_path):
    """The driver commits results and carry together; once the carry's last run finished, its
    folder is empty and untracked, and git refused the whole commit over it (results were lost)."""
    repo = tmp_path / "repo"
    results, carry, old_carry = repo / "results", repo / "carry", repo / "old_carry"
    results.mkdir(parents=True)
    old_carry.mkdir()
    (old_carry / "w.h5").write_text("w")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(git + ["add", "-A"], cwd=repo, check=True)
    subprocess.run(git + ["commit", "-qm", "carry"], cwd=repo, check=True)
    (old_carry / "w.h5").unlink()
    old_carry.rmdir()
    carry.mkdir()
    (results / "summary.json").write_text("{}")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        carrying.commit_paths([str(results), str(carry), str(old_carry)], "results", repo=str(repo))
    tree = subprocess.run(["git", "ls-tree", "-r", "--name-only", "HEAD"], cwd=repo, capture_output=True, text=True)
    assert tree.stdout.split() == ["results/summary.json"]
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True)
    assert status.stdout == ""


def test_model_cascade_records_where_and_when_each_sweep_ran(tmp_path, monkeypatch):
    """The sweeps of different models run in different sessions, so each keeps its own machine;
    a bundle swept before is not swept again."""
    import types

    import tf_fusionnet.data.sources as sources

    work = tmp_path / "work"
    (work / "m").mkdir(parents=True)
    (work / "m" / "model.keras").write_bytes(b"")
    (work / "bundle-m").mkdir()
    (work / "bundle-m" / "manifest.json").write_text("{}")  # exported already: no export runs
    test = types.SimpleNamespace(test_images=np.zeros((5, 2, 2, 3), np.uint8), test_labels=np.arange(5))
    monkeypatch.setattr(sources, "load_dataset", lambda data: test)
    swept = []
    monkeypatch.setattr(kept_results, "cascade_sweep",
                        lambda bundle, precision, images, labels: swept.append((precision, len(images))) or [{}])
    job = plan.Job("m", "main", "fusionnet-cifar", 30, 0, 0.05, 0.0)
    summary = {"cascade": {"m float32": [{"mean_ms": 1.0}]}}
    assert kept_results.model_cascade(job, {"data": "unused", "cascade_images": 3}, str(work), summary)
    assert swept == [("int8", 3)]
    measured = summary["cascade_measured_on"]
    assert list(measured) == ["m int8"]
    assert {"cpu_model", "simd_flags", "at"} <= set(measured["m int8"]) and measured["m int8"]["at"].endswith("UTC")
    assert not kept_results.model_cascade(job, {"data": "unused", "cascade_images": 3}, str(work), summary)  # both done now


def _kept_run(out, name, phase, preset, seed, exit_macs, accuracy, difficulty, rng, files=True):
    """A finished run as the driver commits it: per-image predictions (each image right when its
    difficulty, shared by every run, plus a little run noise is below the exit's accuracy), the
    thresholds of two budgeted points, and its summary entry."""
    n = difficulty.size
    labels = np.arange(n) % 10
    correct = (difficulty[None] + 0.02 * rng.normal(size=(len(exit_macs), n))) < np.asarray(accuracy)[:, None]
    predicted = np.where(correct, labels, (labels + 1) % 10).astype(np.uint8)
    confidence = rng.uniform(0.3, 1.0, size=correct.shape).astype(np.float16)
    thresholds = [[0.9] * (len(exit_macs) - 1) + [-np.inf], [0.6] * (len(exit_macs) - 1) + [-np.inf]]
    entry = _job(name, phase, preset, [(m, float(c.mean())) for m, c in zip(exit_macs, correct)], seed=seed)
    from tf_fusionnet.evaluation.compare import budget_curve_scores

    costs, at_point = budget_curve_scores(confidence, predicted, labels, thresholds, [m * 1e6 for m in exit_macs])
    entry["budgeted"] = [{"avg_macs": float(c), "top1": float(a)} for c, a in zip(costs, at_point.mean(axis=1))]
    if files:
        (out / name).mkdir()
        common.save_predictions(str(out / name / "test_predictions.npz"),
                                {"predicted": predicted, "confidence": confidence, "labels": labels.astype(np.uint8)})
        (out / name / "budgeted.json").write_text(json.dumps({"points": [{"thresholds": t} for t in thresholds]}))
    return entry


def test_verdicts_come_from_the_committed_per_image_files_with_their_intervals(tmp_path):
    import cpu30.verdicts as verdicts

    rng = np.random.default_rng(0)
    difficulty = rng.random(3000)
    fusion_macs, msdnet_macs = (17, 35, 63), (15, 37, 76)
    jobs = {}
    for seed in (0, 1, 2):
        suffix = "" if seed == 0 else f"-30ep-seed{seed}"
        phase = {0: "main", 1: "seed", 2: "seed2"}[seed]
        # FusionNet 8 points ahead at every exit; seed 0 of FusionNet kept no per-image files.
        jobs[f"fusionnet-cifar{suffix}"] = _kept_run(tmp_path, f"fusionnet-cifar{suffix}", phase, "fusionnet-cifar",
                                                     seed, fusion_macs, (0.78, 0.84, 0.88), difficulty, rng,
                                                     files=seed != 0)
        jobs[f"msdnet-cifar-anytime{suffix}"] = _kept_run(tmp_path, f"msdnet-cifar-anytime{suffix}", phase,
                                                          "msdnet-cifar-anytime", seed, msdnet_macs,
                                                          (0.70, 0.76, 0.80), difficulty, rng)
        for preset, macs, accuracy in (("fusionnet-cifar", fusion_macs, (0.78, 0.84, 0.88)),
                                       ("msdnet-cifar-anytime", msdnet_macs, (0.70, 0.76, 0.80))):
            name = f"{preset}-distill-30ep-seed{seed}"  # distillation changes nothing here
            jobs[name] = _kept_run(tmp_path, name, "distill", preset, seed, macs, accuracy, difficulty, rng)
    summary = {"jobs": jobs, "baseline_preset": "msdnet-cifar-anytime"}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    text = report.write_report(str(tmp_path))
    result = json.loads((tmp_path / "verdicts.json").read_text())
    plain = result["models"]["FusionNet - MSDNet"]
    assert plain["seeds"] == [0, 1, 2]
    exit_1 = plain["points"]["exit 1 (17.0M)"]
    # MSDNet interpolated at 17M; seed 0's pair read from the summary's accuracies.
    want = [jobs[f"fusionnet-cifar{s}"]["anytime"][0]["top1"]
            - curves.interpolate(*curves.exit_curve(jobs[f"msdnet-cifar-anytime{s}"]), 17e6)
            for s in ("", "-30ep-seed1", "-30ep-seed2")]
    assert exit_1["estimate"]["per_pair"] == pytest.approx(want, abs=1e-9)
    assert exit_1["estimate"]["df"] == 2 and exit_1["verdict"] == "supported"
    ahead = next(v for k, v in plain["claims"].items() if k.startswith("0.5-1 point ahead"))
    assert ahead["verdict"] == "supported" and ahead["margin"] == 0.005
    # Nothing changes with distillation: MSDNet's gain is undecided, its interval covers 0.
    gain = result["distillation"]["msdnet-cifar-anytime"]["mean over the exits"]
    assert gain["verdict"] == "undecided" and gain["estimate"]["low"] < 0 < gain["estimate"]["high"]
    # FusionNet's gain pairs only the seeds whose undistilled run kept files on both sides.
    assert result["distillation"]["fusionnet-cifar"]["points"]["exit 1 (17.0M)"]["estimate"]["per_pair"][0] \
        == pytest.approx(0, abs=0.02)
    assert "## Verdicts over seeds and test images (issue 33)" in text
    assert "| 0.5-1 point ahead from 25M to 64M (mean of the curve over 25-63.0M; margin 0.5) | +" in text
    assert (tmp_path / "anytime_seed_means.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_readme_results_are_those_of_the_committed_report():
    """Every interval the README's results section quotes is one the committed results.md prints."""
    import os
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "README.md")) as f:
        readme = f.read()
    section = readme[readme.index("## Results"):readme.index("## Read more")]
    with open(os.path.join(root, "benchmarks", "results", "cifar10_cpu30", "results.md")) as f:
        results = f.read()
    quoted = re.findall(r"[+-]\d+\.\d\d \[[+-]\d+\.\d\d, [+-]\d+\.\d\d\]", section)
    assert len(quoted) >= 5
    assert [q for q in quoted if q not in results] == []


def test_the_gradient_equilibrium_pilot_runs_last_with_its_flag_and_is_reported(tmp_path, monkeypatch):
    settings = dict(main=["fusionnet-cifar", "msdnet-cifar-anytime"], epochs=30, ablation_epochs=10, seed_epochs=30,
                    ablations=(), pilot_preset="msdnet-cifar-anytime", pilot_epochs=5, pilot_lrs=["0.05"],
                    pilot_mix=["0"], distill_pilot=[(0.5, 1.0)], data="d", batch=128, val_size=5000,
                    precision="float32")
    summary = {"jobs": {}, "recipe": {"lr": 0.05, "mix_prob": 0.0},
               "distill": {"alpha": 0.5, "temperature": 1.0, "teacher": "last",
                           "plain_recipe_val_top1_mean_over_exits": 0.8209}}
    jobs = plan.planned_jobs(settings, summary)
    assert jobs[-1].phase == "ge_pilot" and jobs[-1].gradient_equilibrium and jobs[-1].epochs == 10
    assert not any(j.gradient_equilibrium for j in jobs[:-1])
    commands = []
    monkeypatch.setattr(plan, "run_command", commands.append)
    plan.train(jobs[-1], settings, str(tmp_path))
    plan.train(jobs[-2], settings, str(tmp_path))
    assert "--gradient_equilibrium" in commands[0] and "--gradient_equilibrium" not in commands[1]
    summary["jobs"][jobs[-1].name] = {"name": jobs[-1].name, "phase": "ge_pilot", "epochs": 10, "warmup_epochs": 1,
                                      "val_top1_mean_over_exits": 0.83, "val_top1_last_exit": 0.84}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    text = report.write_report(str(tmp_path))
    assert "| ge-pilot-msdnet-cifar-anytime | 10 (1) | 83.00 | 84.00 | 82.09 |" in text


def test_a_rerun_of_seed_0_replaces_the_first_run_in_every_verdict_and_is_tabled_beside_it(tmp_path):
    import cpu30.verdicts as verdicts

    settings = dict(main=["fusionnet-cifar", "msdnet-cifar-anytime"], epochs=30, ablation_epochs=10, seed_epochs=30,
                    ablations=(), pilot_preset="msdnet-cifar-anytime", pilot_epochs=5, pilot_lrs=["0.05"],
                    pilot_mix=["0"], distill_pilot=[(0.5, 1.0)], rerun_seed0=["fusionnet-cifar"])
    summary = {"jobs": {}, "recipe": {"lr": 0.05, "mix_prob": 0.0},
               "distill": {"alpha": 0.5, "temperature": 1.0, "teacher": "last"}}
    planned = plan.planned_jobs(settings, summary)
    names = [j.name for j in planned]
    rerun = planned[names.index("fusionnet-cifar-30ep-seed0")]
    assert (rerun.phase, rerun.seed, rerun.distill_alpha, rerun.epochs) == ("rerun", 0, 0.0, 30)
    # After every distilled run, before the gradient-equilibrium pilot.
    assert names.index("msdnet-cifar-anytime-distill-30ep-seed2") < names.index(rerun.name) < len(names) - 1
    assert [j.name for j in plan.distill_jobs({**settings, "rerun_seed0": []}, 0.05, 0.0, summary["distill"])
            ].count(rerun.name) == 0

    rng = np.random.default_rng(1)
    difficulty = rng.random(3000)
    jobs = {}
    for seed in (0, 1, 2):
        suffix = "" if seed == 0 else f"-30ep-seed{seed}"
        phase = {0: "main", 1: "seed", 2: "seed2"}[seed]
        # The first FusionNet seed 0 kept no files and reads 20 points behind; its rerun 5 ahead.
        fusion = (0.55, 0.60, 0.65) if seed == 0 else (0.78, 0.84, 0.88)
        jobs[f"fusionnet-cifar{suffix}"] = _kept_run(tmp_path, f"fusionnet-cifar{suffix}", phase, "fusionnet-cifar",
                                                     seed, (17, 35, 63), fusion, difficulty, rng, files=seed != 0)
        jobs[f"msdnet-cifar-anytime{suffix}"] = _kept_run(tmp_path, f"msdnet-cifar-anytime{suffix}", phase,
                                                          "msdnet-cifar-anytime", seed, (15, 37, 76),
                                                          (0.70, 0.76, 0.80), difficulty, rng)
    jobs[rerun.name] = _kept_run(tmp_path, rerun.name, "rerun", "fusionnet-cifar", 0, (17, 35, 63),
                                 (0.75, 0.81, 0.85), difficulty, rng)
    assert verdicts.cell_entries(jobs)[("fusionnet-cifar", False)][0]["name"] == rerun.name
    # Whichever order the summary lists them in.
    backwards = dict(reversed(list(jobs.items())))
    assert verdicts.cell_entries(backwards)[("fusionnet-cifar", False)][0]["name"] == rerun.name
    (tmp_path / "summary.json").write_text(json.dumps({"jobs": jobs, "baseline_preset": "msdnet-cifar-anytime"}))
    text = report.write_report(str(tmp_path))
    last = json.loads((tmp_path / "verdicts.json").read_text())["models"]["FusionNet - MSDNet"]["points"]
    # Seed 0's pair is the rerun's, read image by image: near +5 points, not -20.
    first_pair = last["exit 3 (63.0M)"]["estimate"]["per_pair"][0]
    assert first_pair == pytest.approx(0.85 - curves.interpolate([15e6, 37e6, 76e6], [0.70, 0.76, 0.80], 63e6),
                                       abs=0.03)
    section = text[text.index("## Seed 0 again"):]
    section = section[:section.index("\n## ")]
    rows = [line.split(" | ")[0] for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1:] == ["| fusionnet-cifar-30ep-seed0", "| fusionnet-cifar", "| msdnet-cifar-anytime"]


def test_a_restart_of_the_finished_comparison_trains_nothing_and_commits_nothing(tmp_path):
    """Run the driver with --commit on a copy of the committed results: every run is finished, so it
    may rewrite the report but must neither train nor make a commit (restarts used to commit the
    distillation pilot's unchanged choice each time)."""
    import os
    import shutil
    import sys

    root = common.ROOT
    out = tmp_path / "out"
    shutil.copytree(os.path.join(root, "benchmarks", "results", "cifar10_cpu30"), out)
    wrapper = tmp_path / "driver.py"
    wrapper.write_text(f"""
import json, runpy, sys
sys.path.insert(0, {os.path.join(root, "benchmarks")!r})
import common
import cpu30.carry
commits = []
cpu30.carry.commit_paths = lambda paths, message, **kw: commits.append(message)
def refuse(command, *args, **kwargs):
    raise AssertionError(f"the finished comparison ran {{command}}")
common.run_command = refuse
sys.argv = ["cifar10_cpu30.py", "--commit", "--out", {str(out)!r}, "--work", {str(tmp_path / "work")!r},
            "--carry", {str(tmp_path / "carry")!r}]
try:
    runpy.run_path({os.path.join(root, "benchmarks", "cifar10_cpu30.py")!r}, run_name="__main__")
except SystemExit as exit:
    assert not exit.code, exit.code
print("COMMITS " + json.dumps(commits))
""")
    done = subprocess.run([sys.executable, str(wrapper)], capture_output=True, text=True, cwd=root, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    commits = json.loads(done.stdout.rsplit("COMMITS ", 1)[1])
    assert commits == []
