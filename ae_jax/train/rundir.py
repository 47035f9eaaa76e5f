"""The run directory: its checks before anything is written, run.json, and the restore of a saved run."""

import functools
import importlib.metadata
import json
import os
import platform
import socket
import tempfile
import time

import jax
from jax.experimental import multihost_utils
import numpy as np

from ae_jax import checkpoint, data, faults, metrics, models, objectives
from ae_jax import config as config_lib
from ae_jax.models import layers
from ae_jax.train.logwindow import LogWindow


def check_workdir(workdir: str) -> None:
  """Raises ValueError unless workdir is (or can be made) a writable directory.

  Probes with a temporary folder that is removed again, since permission bits
  do not bind root.
  """
  path = os.path.abspath(workdir)
  probe_in = path
  while not os.path.exists(probe_in):
    if os.path.islink(probe_in):  # a link to nothing: an unmounted filesystem, a moved folder
      raise ValueError(f"workdir={workdir!r}: {probe_in} is a symbolic link to {os.readlink(probe_in)!r}, "
                       "which does not exist (a filesystem not mounted?)")
    probe_in = os.path.dirname(probe_in)
  if not os.path.isdir(probe_in):
    raise ValueError(f"workdir={workdir!r}: {probe_in} is not a directory")
  try:
    with tempfile.TemporaryDirectory(dir=probe_in, prefix=".ae_jax_probe_"):
      pass
  except OSError as e:
    if e.errno in faults.ERRNOS:  # the machine's fault (read-only, full, gone), not the argument's
      raise faults.EnvironmentFault(f"workdir={workdir!r}: {faults.ERRNOS[e.errno]} in {probe_in}") from None
    raise ValueError(f"workdir={workdir!r}: not writable ({e.strerror or e})") from None


def versions() -> dict:
  names = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "tensorflow-datasets",
           "numpy", "ml_collections")
  out = {"python": platform.python_version()}
  for name in names:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def check_saved_run(meta: dict, config, workdir: str, steps_per_epoch: int | None,
                    allow_config_change: bool, data_sha256: str | None = None) -> None:
  """Raises ValueError unless the run saved in workdir can continue under `config` (and data_sha256,
  the data's checksum).

  steps_per_epoch=None checks the config alone (before the data is loaded).
  """
  conflicts, reshaping = config_lib.resume_conflicts(meta["config"], config)
  saved_data = meta.get("data_sha256")  # checkpoints written before it was recorded have none
  if data_sha256 is not None and saved_data is not None and saved_data != data_sha256:
    conflicts.append(f"data sha256: {saved_data[:12]}... -> {data_sha256[:12]}...")
  if reshaping:
    raise ValueError(
        f"workdir={workdir!r} holds a model of another shape ({'; '.join(reshaping)}): its "
        "parameters or optimizer state cannot be loaded into this one, even with --allow_config_change; "
        "use a new workdir")
  if conflicts and not allow_config_change:
    raise ValueError(
        f"workdir={workdir!r} holds a run with another config or data ({'; '.join(conflicts)}): use a "
        "new workdir, or pass --allow_config_change to continue it with this config")
  if steps_per_epoch is not None and (meta["steps_per_epoch"] != steps_per_epoch
                                      or meta["batch_size"] != config.batch_size):
    raise ValueError(
        f"workdir={workdir!r} holds a run with batch_size={meta['batch_size']} and "
        f"{meta['steps_per_epoch']} steps/epoch; this config has batch_size={config.batch_size} "
        f"and {steps_per_epoch}: use a new workdir")


def restore(workdir: str, config, state, steps_per_epoch: int, allow_config_change: bool,
            data_sha256: str | None = None):
  """(state, window, unreadable steps) from the workdir's latest readable checkpoint, if any."""
  if jax.process_count() > 1:  # every process must see the workdir before any of them writes to it
    multihost_utils.sync_global_devices("ae_jax: workdir checked")
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return state, LogWindow(), []
  reader = checkpoint.manager(workdir, config.keep_checkpoints)
  try:
    restored = checkpoint.restore_latest(reader, state, functools.partial(
        check_saved_run, config=config, workdir=workdir, steps_per_epoch=steps_per_epoch,
        allow_config_change=allow_config_change, data_sha256=data_sha256))
  finally:
    reader.close()
  if restored is None:
    return state, LogWindow(), []
  host_state, meta, unreadable = restored
  state = state.replace(**{k: getattr(host_state, k) for k in ("step", "params", "opt_state")})
  return state, LogWindow.from_meta(meta["log_window"]), unreadable


class Lock:
  """An exclusive lock on WORKDIR/.lock, held by one run (its chief) at a time.

  fcntl.flock: the kernel releases it when the holder's process ends, however it
  ends (kill -9 too), so a stopped run never leaves a stale lock. The file holds
  the holder's pid, host and start time for the refusal's message while it is held
  (empty once released; a killed holder's line stays until the next run takes it). Every process
  of a multi-process run learns whether its chief got the lock.
  """

  def __init__(self, workdir: str):
    self.workdir, self.path, self._fd = workdir, os.path.join(workdir, LOCK_FILE), None

  def __enter__(self):
    import fcntl  # pylint: disable=g-import-not-at-top  (POSIX only)

    held_by = None
    if jax.process_index() == 0:
      os.makedirs(self.workdir, exist_ok=True)
      self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # never truncated before it is ours
      try:
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        for _ in range(20):  # the holder writes its line just after taking the lock
          held_by = os.pread(self._fd, 1000, 0).decode(errors="replace").strip()
          if held_by:
            break
          time.sleep(0.05)
        held_by = held_by or "another process"
        os.close(self._fd)
        self._fd = None
      else:
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                           f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
    if jax.process_count() > 1:
      held = multihost_utils.broadcast_one_to_all(np.int32(held_by is not None))
      held_by = held_by or ("another process" if int(held) else None)
    if held_by is not None:
      raise ValueError(f"workdir={self.workdir!r} is in use by {held_by}: wait for that run to end or stop "
                       "it; two runs in one workdir would overwrite each other's checkpoints")
    return self

  def __exit__(self, *exc):
    if self._fd is not None:
      try:  # a released lock names no holder: a run that only read the workdir leaves it as it was
        os.ftruncate(self._fd, 0)
      except OSError:
        pass  # a vanished or read-only filesystem: the kernel releases the lock all the same
      os.close(self._fd)  # releases the lock
      self._fd = None


LOCK_FILE = ".lock"


def read_previous(workdir: str) -> list[dict]:
  """run.json's records of the invocations so far, for a run that resumes from a checkpoint.

  A damaged run.json is one ValueError naming it and how to continue, found
  before anything is written.
  """
  path = os.path.join(workdir, "run.json")
  if not os.path.isdir(os.path.join(workdir, "checkpoints")) or not os.path.exists(path):
    return []
  try:
    with open(path) as f:
      earlier = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise metrics.DamagedFile(
        f"{path} is damaged ({e}); it only records the earlier invocations: move it aside "
        f"(mv {path} {path}.damaged) and rerun, which continues from the latest checkpoint") from None
  return earlier.pop("previous", []) + [earlier]


def _plug(registry: dict, name: str) -> dict:
  return {"name": name, "module": registry[name].module}


def run_record(config, ds: data.Dataset, devices, state, schedule: data.Schedule, start_step: int,
               previous: list[dict]) -> dict:
  """run.json: what this invocation ran with; the earlier ones' records (read_previous) under 'previous'."""
  return {
      "config": json.loads(config.to_json_best_effort()),
      "objective": _plug(objectives.REGISTRY, config.objective),
      "model": _plug(models.ARCHITECTURES, config.model.name),
      "data_source": _plug(data.SOURCES, config.data.source),
      "versions": versions(),
      "data": ds.summary(),
      "devices": [str(d) for d in devices],
      "processes": jax.process_count(),
      "parallel": config.parallel,
      "conv_impl": layers.resolve(config.model.conv_impl),
      "steps_per_call": schedule.steps_per_call,
      "data_on_device": data.on_device(config.data_on_device, ds.train),
      "param_counts": {**{k: models.count_params(v) for k, v in state.params.items() if isinstance(v, dict)},
                       "total": models.count_params(state.params)},
      "steps_per_epoch": schedule.steps_per_epoch,
      "total_steps": schedule.total_steps,
      "resumed_from_step": start_step,
      "previous": previous,
  }


# What two runs of the same work may differ in.
TIMINGS = ("images_per_sec", "data_wait", "final_eval_seconds")


def compare_runs(a: str, b: str) -> dict:
  """Bit-level comparison of two finished runs' workdirs: final params, eval.json, metrics records.

  What a resumed or re-run run must equal (the timings, TIMINGS, left out).
  """
  (step_a, state_a, _), (step_b, state_b, _) = checkpoint.read_latest(a), checkpoint.read_latest(b)
  leaves = zip(jax.tree.leaves(state_a["params"]), jax.tree.leaves(state_b["params"]))
  params_equal = step_a == step_b and all(np.array_equal(x, y) for x, y in leaves)

  def untimed(r):
    return {k: v for k, v in r.items() if k not in TIMINGS}

  with open(os.path.join(a, "eval.json")) as fa, open(os.path.join(b, "eval.json")) as fb:
    eval_equal = untimed(json.load(fa)) == untimed(json.load(fb))

  def records(workdir):
    return [untimed(r) for r in metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))]
  return {"step": [step_a, step_b], "params_bit_identical": bool(params_equal),
          "eval_json_identical": eval_equal, "metrics_identical": records(a) == records(b)}
