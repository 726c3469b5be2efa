"""Start-up of the entry scripts: TensorFlow's environment, a quiet import, one-line errors.

Import this before anything that loads TensorFlow: ``setup_environment`` only sets
environment variables TensorFlow reads when it loads.
"""

from __future__ import annotations

import contextlib
import os
import sys

from tf_fusionnet.runtime.portable import captured_stderr_fd


def setup_environment() -> None:
    """TensorFlow's settings for every script, unless the environment already sets them."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TF leaves oneDNN off on CPUs without AVX-512 VNNI/BF16 or AMX (e.g. AMD Zen 3); on, training
    # runs 1.6x faster there (docs/training.md).
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def import_tensorflow(verbose: bool = False):
    """Imports TensorFlow and initialises its devices, hiding its C++ start-up log unless ``verbose``."""
    context = contextlib.nullcontext() if verbose else captured_stderr_fd()
    with context:
        import tensorflow as tf

        tf.config.list_physical_devices()  # device init logs the CUDA probe: keep it inside
        import keras  # noqa: F401
    return tf


def one_line(error: BaseException) -> str:
    """An error's message on one line (some libraries' messages span several)."""
    return " ".join(str(error).split()) or type(error).__name__


__all__ = ["setup_environment", "captured_stderr_fd", "import_tensorflow", "one_line", "run_tool", "tool_help"]


HELP_FLAGS = ("--help", "-h", "-?", "--helpshort")


def tool_help(doc: str | None, flag_module: str) -> str:
    """A tool's ``--help``: its docstring, then its own flags with their defaults.

    absl's ``--help`` lists only flags defined in the ``__main__`` module, and the tools define
    theirs in ``tf_fusionnet.cli`` (so the scripts and the installed commands share them): it
    showed none, and ``--helpfull`` buried them under absl's own."""
    from absl import flags

    own = flags.FLAGS.module_help(flag_module).strip()
    lines = (doc or "").strip().splitlines()
    return "\n".join(lines + ["", "Flags (default in brackets):", own or "  (none)",
                               "", "absl's own flags (logging, flagfile): --helpfull"]) + "\n"


def run_tool(main, doc: str | None, flag_module: str | None = None) -> None:
    """Runs an absl ``main`` as a console entry point (``pyproject.toml``) or script, with the
    tool's docstring and own flags as its ``--help`` (:func:`tool_help`, exit 0)."""
    from absl import app

    if flag_module and any(arg in HELP_FLAGS for arg in sys.argv[1:]):
        sys.stdout.write(tool_help(doc, flag_module))
        raise SystemExit(0)
    main_module = sys.modules.get("__main__")
    if main_module is not None and not main_module.__doc__:
        main_module.__doc__ = doc
    app.run(main)
