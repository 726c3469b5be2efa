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
