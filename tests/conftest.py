import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A fusionnet-tiny run trained 1 epoch on the embedded sample, shared by the test modules
    that export it. Treat it as read-only (exports add their logits cache to its eval/)."""
    from tf_fusionnet.training import TrainConfig, train

    run = str(tmp_path_factory.mktemp("tiny_run") / "run")
    train(TrainConfig(preset="fusionnet-tiny", epochs=1, batch_size=64, verbose=0, output=run))
    return run


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_run):
    """The tiny run's bundle in float32, float16 and int8, with standalone exits, shared by the
    modules that test exports and the runner. Read-only: a case that changes it copies it first."""
    from tf_fusionnet.export.bundle import export_bundle

    out = str(tmp_path_factory.mktemp("export") / "bundle")
    export_bundle(tiny_run, out, precisions=("float32", "float16", "int8"), standalone=True, verbose=False)
    return out


def load_benchmark_script(name: str):
    """Imports benchmarks/NAME.py as a module, for tests of its report code.

    The benchmark scripts define absl flags of the same names, so the flags this one adds are
    removed again: the next script can then be loaded in the same process. Report code reads
    no flag.
    """
    import importlib.util

    from absl import flags

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    before = set(flags.FLAGS)
    spec.loader.exec_module(module)
    for flag in set(flags.FLAGS) - before:
        delattr(flags.FLAGS, flag)
    return module
