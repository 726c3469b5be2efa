"""The on-device runtime of a bundle: numpy and ai-edge-litert (Pillow for image files), never TensorFlow.

Copied whole into every bundle as ``BUNDLE/tf_fusionnet_runtime/`` beside its entry script
``cascade_runner.py``. Each file has one job:

* :mod:`.manifest`: the bundle format (schema, path rules, digests, the check of each stage);
* :mod:`.stages`: the stages as LiteRT interpreters, chained by their named tensors;
* :mod:`.quantization`: int8 tensors and the conversions between stages;
* :mod:`.confidence`: an exit's answer and confidence;
* :mod:`.runner`: :class:`CascadeRunner`, the cascade with its thresholds;
* :mod:`.latency`: latency budgets and deadlines on this device;
* :mod:`.server`: server mode, full batches at every stage;
* :mod:`.cli`: the command line and image files;
* :mod:`.portable`: the image-mode rule shared with the training loader.

Relative imports only: the same files run as ``tf_fusionnet.runtime`` and as a bundle's own copy.
"""

from .cli import RunningSummary, classify_batches, classify_files, console_main, iter_images, main, read_image
from .confidence import softmax
from .manifest import (FORMAT_VERSION, MANIFEST, MANIFEST_DIGEST, READABLE_FORMAT_VERSIONS, RUNTIME_FILES,
                       RUNTIME_FOLDER, RUNTIME_MODULES, BundleError, bundle_path, check_stage, decode_thresholds,
                       encode_thresholds, entry_for_budget, is_bundle_name, load_manifest, reads_pixels, sha256_file,
                       validate_manifest, verify_files)
from .portable import DEFAULT_RESIZE, RESIZE_MODES, fit_to_input
from .quantization import dequantize, quantize, same_quantization
from .runner import CLASSIFY_BATCH, CascadeRunner

__all__ = ["CLASSIFY_BATCH", "DEFAULT_RESIZE", "RESIZE_MODES", "fit_to_input", "FORMAT_VERSION", "MANIFEST", "MANIFEST_DIGEST", "READABLE_FORMAT_VERSIONS",
           "RUNTIME_FILES", "RUNTIME_FOLDER", "RUNTIME_MODULES", "BundleError", "CascadeRunner", "RunningSummary",
           "bundle_path", "check_stage", "classify_batches", "classify_files", "console_main", "decode_thresholds",
           "dequantize", "encode_thresholds", "entry_for_budget", "is_bundle_name", "iter_images", "load_manifest",
           "main", "quantize", "read_image", "reads_pixels", "same_quantization", "sha256_file", "softmax",
           "validate_manifest", "verify_files"]
