"""Train a multi-exit classifier.

    python train.py                                   # embedded CIFAR-10 sample, offline
    python train.py --dataset cifar10                 # full recipe: 300 epochs, batch 512
    python train.py --dataset PATH --preset msdnet-cifar-anytime --output runs/msd

Every flag and its default (the paper's recipe): python train.py --help,
or tf_fusionnet/training/config.py. Re-running the same command resumes a run.
"""

import importlib.util
import os
import sys

if importlib.util.find_spec("tf_fusionnet") is None:  # a checkout that was not pip-installed
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tf_fusionnet.cli.train import run  # noqa: E402

if __name__ == "__main__":
    run()
