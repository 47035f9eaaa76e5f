r"""Trains an autoencoder: `python -m experiments.train --config CONFIG --workdir DIR`.

Rerunning the same command with the same workdir resumes from its latest
checkpoint. Override any config field with `--config.FIELD=VALUE`.
"""

import logging as py_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from ae_jax import data, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (experiments/configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and pictures.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(py_logging.Filter):
  """Keeps the progress lines readable: INFO from Orbax/TensorStore internals is dropped."""

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or not any(
        f"/{lib}/" in record.pathname for lib in ("orbax", "tensorstore", "etils"))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ValueError, data.DataError, FloatingPointError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
