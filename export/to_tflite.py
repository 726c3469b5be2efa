"""Export a train.py run as a TFLite bundle: one model per exit stage, plus the cascade runner.

    python export/to_tflite.py --run RUN --out BUNDLE [--precision float32,int8] [--standalone]

The bundle folder is the deliverable: copy it to a device, `pip install ai-edge-litert numpy
pillow`, and run `python BUNDLE/cascade_runner.py IMAGES... --budget MACS`.
"""

import importlib.util
import os
import sys

if importlib.util.find_spec("tf_fusionnet") is None:  # a checkout that was not pip-installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tf_fusionnet.cli.export import run  # noqa: E402

if __name__ == "__main__":
    run()
