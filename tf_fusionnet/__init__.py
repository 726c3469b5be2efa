"""tf_fusionnet: multi-exit image classifiers (FusionNet, MSDNet, RANet) for small devices.

```python
import tf_fusionnet
model = tf_fusionnet.load_model("runs/fusionnet-cifar")       # reads 0-255 pixels
network = tf_fusionnet.FusionNet.from_preset("fusionnet-cifar")  # an architecture, fresh weights
```

Names are imported on first use, so ``import tf_fusionnet.portable`` or
``tf_fusionnet.console`` does not load TensorFlow (entry scripts set TensorFlow's
environment and silence its start-up log before it loads). The classes a saved model names
are registered with Keras as soon as Keras is imported (before or after this package), so
``keras.saving.load_model(PATH)`` finds them after a bare ``import tf_fusionnet``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

from tf_fusionnet.version import __version__  # noqa: F401  (the package's version)

_EXPORTS = {
    # models and presets
    "FusionNet": "tf_fusionnet.models",
    "MSDNet": "tf_fusionnet.models",
    "RANet": "tf_fusionnet.models",
    "MultiExitModel": "tf_fusionnet.models",
    "PixelClassifier": "tf_fusionnet.models",
    "PresetError": "tf_fusionnet.models",
    "load_preset": "tf_fusionnet.models",
    "save_preset": "tf_fusionnet.models",
    "PRESETS": "tf_fusionnet.presets",
    "build_model": "tf_fusionnet.presets",
    "preset_names": "tf_fusionnet.presets",
    "exit_macs": "tf_fusionnet.models.macs",
    "trainable_params": "tf_fusionnet.models.macs",
    # loading anything this project saves
    "load_model": "tf_fusionnet.loading",
    "LoadError": "tf_fusionnet.loading",
    # training
    "TrainConfig": "tf_fusionnet.training",
    "train": "tf_fusionnet.training",
    "ExitDistillation": "tf_fusionnet.training.distillation",
    "TorchSGD": "tf_fusionnet.training.optimizers",
    # data
    "load_dataset": "tf_fusionnet.data.sources",
    "DataError": "tf_fusionnet.data.sources",
    # evaluation
    "budgeted_curve": "tf_fusionnet.evaluation",
    "fit_thresholds": "tf_fusionnet.evaluation",
    "thresholds_for_budget": "tf_fusionnet.evaluation",
    "paired_estimate": "tf_fusionnet.evaluation.compare",
    "verdicts": "tf_fusionnet.evaluation.compare",
    # export and the on-device runner
    "evaluate_run": "tf_fusionnet.evaluation.report",
    "export_bundle": "tf_fusionnet.export.bundle",
    "CascadeRunner": "tf_fusionnet.export.cascade_runner",
}

__all__ = sorted(_EXPORTS)


def _load_tensorflow_quietly() -> None:
    """The first name that needs TensorFlow loads it with its C++ start-up log (oneDNN, CUDA probe,
    ``cuInit`` errors on machines without a GPU) kept off stderr, as the tools do; set
    TF_FUSIONNET_VERBOSE=1 to see it. A TensorFlow that is already loaded is left alone."""
    if "tensorflow" in sys.modules:
        return
    import os

    from tf_fusionnet.console import import_tensorflow, setup_environment

    setup_environment()
    import_tensorflow(verbose=os.environ.get("TF_FUSIONNET_VERBOSE", "") not in ("", "0"))


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        _load_tensorflow_quietly()
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tf_fusionnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    # The public names only: not the helpers (Any, annotations, importlib) this file imports.
    return sorted(set(_EXPORTS) | {"__version__"})


def _register() -> None:
    from tf_fusionnet.loading import register_keras_objects

    register_keras_objects()


class _RegisterAfterKeras(importlib.abc.MetaPathFinder):
    """Registers this package's Keras classes right after ``keras`` itself has been imported.

    Python has no post-import hook; this finder answers for ``keras`` once, hands back the real
    spec with its loader's ``exec_module`` followed by the registration, and leaves
    ``sys.meta_path``. Keras keeps its registry in a plain dict, read at load time, so nothing
    lazier would be found by ``keras.saving.load_model``.
    """

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            try:
                _register()
            except Exception as error:  # never break `import keras` itself
                import warnings

                warnings.warn(f"tf_fusionnet could not register its Keras classes ({error}); "
                              "use tf_fusionnet.load_model", RuntimeWarning, stacklevel=2)

        spec.loader.exec_module = exec_then_register
        return spec


if "keras" in sys.modules:
    _register()
elif not any(isinstance(f, _RegisterAfterKeras) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterKeras())
