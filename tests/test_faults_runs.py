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
