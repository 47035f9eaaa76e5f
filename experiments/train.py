r"""Trains an autoencoder: `python -m experiments.train --config CONFIG --workdir DIR`.

Rerunning the same command with the same workdir resumes from its latest
checkpoint. Override any config field with `--config.FIELD=VALUE`.

Exit codes: 0 done; 2 bad input (one line naming the field, before any work);
3 training diverged (non-finite loss); 4 no readable checkpoint; 5 the processes
of a multi-process run could not all join within --distributed_timeout_s;
128 + signal number after SIGTERM/SIGINT (the current step was checkpointed).

Multi-process (one command per host, same config and workdir on a shared
filesystem; README "Many hosts"): --num_processes, --process_id and
--coordinator_address, or their JAX_* environment variables; --distributed alone
lets JAX find them on TPU pods, SLURM, Open MPI and Kubernetes.
"""

import logging as py_logging
import os
import runpy
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from ae_jax import checkpoint, data, parallel, train
import experiments

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (experiments/configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and pictures.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Continue a workdir whose saved run has a different config.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Join a multi-process run (jax.distributed); implied by --num_processes > 1.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS"),
    "host:port of process 0's coordinator (default $JAX_COORDINATOR_ADDRESS).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", int(os.environ["JAX_NUM_PROCESSES"]) if "JAX_NUM_PROCESSES" in os.environ else None,
    "Processes in the run (default $JAX_NUM_PROCESSES).", lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", int(os.environ["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in os.environ else None,
    "This process's index, 0 .. num_processes - 1 (default $JAX_PROCESS_ID).", lower_bound=0)
_DIST_TIMEOUT = flags.DEFINE_integer(
    "distributed_timeout_s", 300, "Seconds to wait for every process to join.", lower_bound=1)
_KEEP = flags.DEFINE_bool(
    "keep_freed_memory", True, "Keep freed memory in the process (experiments.keep_freed_memory: "
    "faster CPU steps, more resident memory); --nokeep_freed_memory leaves malloc as it is.")
_PEER_TIMEOUT = flags.DEFINE_integer(
    "peer_timeout_s", 100, "A process whose peer stops answering this long exits with an error.",
    lower_bound=1)


def _fail(message: str, code: int = 2):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def _unknown_override(argv) -> str | None:
  """The first --config.KEY=... whose KEY the config file does not define, if any."""
  path = None
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      path = a.split("=", 1)[1]
    elif a == "--config" and i + 1 < len(argv):
      path = argv[i + 1]
  if path is None or not os.path.exists(path):
    return None
  cfg = runpy.run_path(path)["get_config"]()
  for arg in argv:
    if arg.startswith("--config."):
      key = arg[len("--config."):].split("=", 1)[0]
      node = cfg
      for part in key.split("."):
        if not hasattr(node, "keys") or part not in node:
          return key
        node = node[part]
  return None


def parse_flags(argv):
  """absl flag parsing, with every error as one line and exit code 2."""
  try:
    rest = flags.FLAGS(argv)
    if _CONFIG.value is not None:
      _CONFIG.value.keys()  # config_flags defers a load failure to the first attribute read
    return rest
  except OSError as e:
    errno = [ln.strip() for ln in str(e).splitlines() if "Errno" in ln]
    _fail("--config: cannot load the config file" + (f" ({errno[0]})" if errno else ""))
  except flags.Error as e:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    _fail(" ".join(lines[:1] + [ln for ln in lines[1:] if "Errno" in ln])[:500])
  except (AttributeError, KeyError) as e:  # config_flags: an override of a key that does not exist
    key = _unknown_override(argv)
    _fail(f"--config.{key}: unknown config key" if key else f"bad --config override: {e}")


class _QuietLibraries(py_logging.Filter):
  """Keeps the progress lines readable: INFO from Orbax/TensorStore internals is dropped."""

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or not any(
        f"/{lib}/" in record.pathname for lib in ("orbax", "tensorstore", "etils"))


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _WORKDIR.value or not _CONFIG.value:
    _fail("--config and --workdir are required")
  experiments.use_fast_cpu_settings(_KEEP.value)  # before JAX's first op and jax.distributed
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  n, pid = _NUM_PROCESSES.value, _PROCESS_ID.value
  if n is not None and pid is not None and pid >= n:
    _fail(f"--process_id={pid}: expected 0 .. {n - 1} for --num_processes={n}")
  if _DISTRIBUTED.value or (n or 1) > 1:
    if n is not None and n > 1 and (pid is None or not _COORDINATOR.value):
      _fail(f"--num_processes={n}: also give --process_id and --coordinator_address (or "
            "JAX_PROCESS_ID and JAX_COORDINATOR_ADDRESS)")
    parallel.initialize_distributed(_COORDINATOR.value, n, pid, timeout_s=_DIST_TIMEOUT.value,
                                    peer_timeout_s=_PEER_TIMEOUT.value)
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, _ALLOW_CONFIG_CHANGE.value)
  except (ValueError, data.DataError) as e:
    _fail(str(e))
  except FloatingPointError as e:
    _fail(str(e), 3)
  except checkpoint.CheckpointError as e:
    _fail(str(e), 4)
  except train.Preempted as e:
    _fail(str(e), 128 + e.signum)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
