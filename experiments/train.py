r"""Trains an autoencoder: `python -m experiments.train --config CONFIG --workdir DIR`.

Rerunning the same command with the same workdir resumes from its latest
checkpoint. Override any config field with `--config.FIELD=VALUE`.

Exit codes (experiments/cli.py): 0 done; 2 bad input (one line naming the field,
before any work; also a workdir another run holds); 3 training diverged (a
non-finite loss) or collapsed with eval.collapse='error'; 4 no readable
checkpoint; 5 the processes of a multi-process run could not all join within
--distributed_timeout_s; 6 the machine failed (no space, a read-only or vanished
filesystem, an I/O error); 128 + signal number after SIGTERM/SIGINT/SIGHUP to
any process (every process checkpointed the same step).

Multi-process (one command per host, same config and workdir on a shared
filesystem; README "Many hosts"): --num_processes, --process_id and
--coordinator_address, or their JAX_* environment variables; --distributed alone
lets JAX find them on TPU pods, SLURM, Open MPI and Kubernetes.
"""

from absl import flags
from ml_collections import config_flags

from ae_jax import train
from experiments import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (experiments/configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and pictures.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Continue a workdir whose saved run has a different config.")
cli.define_plugins_flag()
cli.define_process_flags()


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _WORKDIR.value or not _CONFIG.value:
    cli.fail("--config and --workdir are required")
  cli.start_process()
  train.train_and_evaluate(cli.with_plugins(_CONFIG.value), _WORKDIR.value, _ALLOW_CONFIG_CHANGE.value)


if __name__ == "__main__":
  cli.run(main)
