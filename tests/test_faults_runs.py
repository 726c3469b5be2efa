"""Issue 47: a run folder's JSON goes through the one limited reader: one line, no traceback."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(tool, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, tool), *args], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("content,pattern", [
    ('{"train": ' + "[" * 100000 + "]" * 100000 + "}", r"nested deeper than 64 levels"),
    (json.dumps({"train": [1, 2], "preset": "fusionnet-tiny", "exit_macs": [1], "model_config": {}}),
     r"train must be a JSON object, got list"),
    ("[1, 2, 3]", r"must hold a JSON object, got list"),
], ids=["nested", "train-is-a-list", "not-an-object"])  # the id goes into the environment: keep it short
def test_evaluate_and_train_answer_a_hostile_config_in_one_line(work, content, pattern):
    with open(os.path.join(work["run"], "config.json"), "w") as f:
        f.write(content)
    tools = [("evaluate.py", ["--run", work["run"]])]
    if "nested" in pattern:  # train reads the same file through the same reader: once is enough
        tools.append(("train.py", ["--output", work["run"], "--preset", "fusionnet-tiny", "--epochs", "2"]))
    for tool, args in tools:
        result = _cli(tool, *args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-1500:]
        assert len(lines) == 1 and __import__("re").search(pattern, lines[0]), (tool, result.stderr[-500:])


def test_eval_results_are_tied_to_the_checkpoint_they_measured(work):
    """evaluate.py's numbers are read back (load_model's test top-1, a model card) only beside the
    checkpoint they measured; an evaluation without --budget removes an earlier budget.json."""
    from tf_fusionnet.evaluation.model_card import model_card
    from tf_fusionnet.evaluation.report import evaluate_run
    from tf_fusionnet.loading import load_model
    from tf_fusionnet.runs.reading import load_checkpoint, load_run

    run = work["run"]
    evaluate_run(run, budget=1e9, verbose=0)
    assert os.path.exists(os.path.join(run, "eval", "budget.json"))
    measured = load_model(run).preset_metadata["test_top1_per_exit"]
    assert measured is not None and len(measured) == 3
    evaluate_run(run, verbose=0)
    assert not os.path.exists(os.path.join(run, "eval", "budget.json"))
    # training goes on: a new model.keras beside the old results
    load_checkpoint(load_run(run)).save(os.path.join(run, "model.keras"))
    assert load_model(run).preset_metadata["test_top1_per_exit"] is None
    with pytest.raises(ValueError, match="no results of the run's model.keras"):
        model_card(run, "x")
    evaluate_run(run, verbose=0)
    assert load_model(run).preset_metadata["test_top1_per_exit"] == measured  # the same weights, measured again
