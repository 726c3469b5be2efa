"""Evaluate train.py runs: anytime prediction and budgeted batch classification.

    python evaluate.py --run runs/fusionnet-cifar
    python evaluate.py --run runs/fusion --run runs/msdnet --out runs/compare
    python evaluate.py --run RUN --budget 40e6 --calibrate

Writes RUN/eval/{probs.npz, anytime.json/.csv/.png, budgeted.json/.csv/.png, ...};
with several runs, overlay plots in --out.
"""

import importlib.util
import os
import sys

if importlib.util.find_spec("tf_fusionnet") is None:  # a checkout that was not pip-installed
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tf_fusionnet.cli.evaluate import run  # noqa: E402

if __name__ == "__main__":
    run()
