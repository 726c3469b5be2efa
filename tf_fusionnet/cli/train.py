"""Train a multi-exit classifier.

    python train.py                                   # embedded CIFAR-10 sample, offline
    python train.py --dataset cifar10                 # full recipe: 300 epochs, batch 512
    python train.py --dataset PATH --preset msdnet-cifar-anytime --output runs/msd

Every flag and its default (the paper's recipe): python train.py --help,
or tf_fusionnet/training/config.py. Re-running the same command resumes a run.
"""

import sys

from tf_fusionnet.console import one_line, run_tool, setup_environment  # noqa: E402  (before TensorFlow loads)

setup_environment()

from absl import flags  # noqa: E402

from tf_fusionnet.training.config import config_fields  # noqa: E402

for _field in config_fields():
    _define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float,
               str: flags.DEFINE_string}[type(_field.default)]
    _define(_field.name, _field.default, _field.metadata["help"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    from tf_fusionnet.training.config import TrainConfig

    config = TrainConfig(**{f.name: getattr(FLAGS, f.name) for f in config_fields()})
    try:
        config.validate()
    except ValueError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    from tf_fusionnet.data.sources import DataError
    from tf_fusionnet.training.trainer import precheck

    try:
        precheck(config)
    except (DataError, ValueError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 1
    from tf_fusionnet.console import import_tensorflow

    import_tensorflow(verbose=config.verbose == 3)
    from tf_fusionnet.training import format_exit_table, train
    from tf_fusionnet.training.distributed import WorkerLostError

    from tf_fusionnet.runs.folder import finished_epochs

    def where_it_stopped() -> str:
        done = finished_epochs(config.run_dir())
        return (f"stopped at epoch {done} of {config.epochs}" if done else "stopped before the first epoch finished"
                ) + "; the same command resumes"

    try:
        result = train(config)
    except (DataError, ValueError, WorkerLostError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"error: interrupted: {where_it_stopped()}", file=sys.stderr)
        return 130
    except OSError as error:  # a full disk or a lost mount while an epoch's files are written
        where = error.filename or config.run_dir()
        print(f"error: cannot write {where} ({error.strerror or one_line(error)}): {where_it_stopped()}",
              file=sys.stderr)
        return 1
    print(f"\nrun: {result['run_dir']}  (last epoch)")
    print(format_exit_table(result))
    return 0


def run() -> None:
    """Console entry point (``pyproject.toml``): the same tool as the script."""
    run_tool(main, __doc__, __name__)


if __name__ == "__main__":
    run()
