"""Command line: ``python -m tensorcache.main --config=configs/base.py:tiny,tc --workdir=/tmp/run``.

Overrides: ``--config.model.window=256 --config.train.steps=1000``. Rerunning the same
command resumes from the newest usable checkpoint in ``--workdir``; Ctrl-C (or SIGTERM)
saves the step reached first. With ``--config.train.distributed=True`` (multi-host, e.g. a
TPU pod slice: docs/tpu.md), ``jax.distributed.initialize()`` runs before any other JAX call.
"""

from absl import flags
from ml_collections import config_flags

from tensorcache import cli

config_flags.DEFINE_config_file("config", None, "Run config file, e.g. configs/base.py:small,tc.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, logs and traces; rerun to resume.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  config = flags.FLAGS.config
  if config.train.distributed:
    import jax  # noqa: PLC0415
    jax.distributed.initialize()  # before anything touches a backend
  cli.start_backends(flags.FLAGS.verbose)
  from tensorcache import train  # noqa: PLC0415 - after the distributed runtime is up
  train.train(config, flags.FLAGS.workdir)


if __name__ == "__main__":
  cli.run(main, start=False)
