import os
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


import pytest  # noqa: E402


# Fixtures that take seconds to build, and the pytest-xdist group of the tests that use them.
EXPENSIVE_FIXTURE_GROUPS = {
    "tiny_run": "tiny_run",
    "tiny_bundle": "tiny_run",
    "web_bundle": "tiny_run",
    "eval_run": "eval_run",
    "ranet_cifar": "ranet_cifar",
}


def pytest_configure(config):
    config.addinivalue_line("markers", "xdist_group(name): run these tests on one pytest-xdist worker")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the groups
def pytest_collection_modifyitems(items):
    """Keeps the tests that share an expensive fixture on one pytest-xdist worker.

    The suite runs on two workers (pytest.ini), and a session or module fixture is built once
    per worker that asks for it: without the group, both workers would train and export the
    same tiny bundle, the suite's dearest step. The group follows from the fixtures a test
    uses, so a new test joins it by asking for one.
    """
    for item in items:
        groups = {EXPENSIVE_FIXTURE_GROUPS[name] for name in getattr(item, "fixturenames", ())
                  if name in EXPENSIVE_FIXTURE_GROUPS}
        if groups:
            item.add_marker(pytest.mark.xdist_group(min(groups)))


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


@pytest.fixture(scope="module")
def trained(tiny_run, tiny_bundle):
    """The shared tiny run and its bundle (never modified by a case: copied first)."""
    return {"run": tiny_run, "bundle": tiny_bundle}


@pytest.fixture
def work(tmp_path, trained):
    """The fault suites' private copies of the run and the bundle, and a user's folder with a file in it."""
    run = str(tmp_path / "run")
    bundle = str(tmp_path / "bundle")
    shutil.copytree(trained["run"], run)
    shutil.copytree(trained["bundle"], bundle)
    user = tmp_path / "my_folder"
    user.mkdir()
    (user / "thesis.txt").write_text("years of work")
    return {"root": str(tmp_path), "run": run, "bundle": bundle, "user": str(user)}


def benchmarks_on_path() -> None:
    """Puts benchmarks/ on ``sys.path``, as running a script there does, for tests of its parts."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
    if path not in sys.path:
        sys.path.insert(0, path)


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
