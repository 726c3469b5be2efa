"""The run folder that ``train.py`` writes and evaluation and export read: its one owner.

:mod:`~tf_fusionnet.runs.folder` writes and checks it (layout, lock, resume and architecture
checks, split); :mod:`~tf_fusionnet.runs.reading` reads it (config, data, checkpoints, logits).
"""

from tf_fusionnet.runs.reading import (CHECKPOINTS, Run, RunError, load_checkpoint, load_run, load_run_data,
                                       logits_cache_key, run_logits)

__all__ = ["CHECKPOINTS", "Run", "RunError", "load_checkpoint", "load_run", "load_run_data", "logits_cache_key",
           "run_logits"]
