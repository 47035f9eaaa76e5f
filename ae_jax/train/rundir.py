"""The run directory: its checks before anything is written, run.json, and the restore of a saved run."""

import functools
import importlib.metadata
import json
import os
import platform
import tempfile

import jax
from jax.experimental import multihost_utils
import numpy as np

from ae_jax import checkpoint, data, metrics, models, objectives
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
    probe_in = os.path.dirname(probe_in)
  if not os.path.isdir(probe_in):
    raise ValueError(f"workdir={workdir!r}: {probe_in} is not a directory")
  try:
    with tempfile.TemporaryDirectory(dir=probe_in, prefix=".ae_jax_probe_"):
      pass
  except OSError as e:
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
                    allow_config_change: bool) -> None:
  """Raises ValueError unless the run saved in workdir can continue under `config`.

  steps_per_epoch=None checks the config alone (before the data is loaded).
  """
  conflicts, reshaping = config_lib.resume_conflicts(meta["config"], config)
  if reshaping:
    raise ValueError(
        f"workdir={workdir!r} holds a model of another shape ({'; '.join(reshaping)}): its "
        "parameters or optimizer state cannot be loaded into this one, even with --allow_config_change; "
        "use a new workdir")
  if conflicts and not allow_config_change:
    raise ValueError(
        f"workdir={workdir!r} holds a run with another config ({'; '.join(conflicts)}): use a "
        "new workdir, or pass --allow_config_change to continue it with this config")
  if steps_per_epoch is not None and (meta["steps_per_epoch"] != steps_per_epoch
                                      or meta["batch_size"] != config.batch_size):
    raise ValueError(
        f"workdir={workdir!r} holds a run with batch_size={meta['batch_size']} and "
        f"{meta['steps_per_epoch']} steps/epoch; this config has batch_size={config.batch_size} "
        f"and {steps_per_epoch}: use a new workdir")


def restore(workdir: str, config, state, steps_per_epoch: int, allow_config_change: bool):
  """(state, window, unreadable steps) from the workdir's latest readable checkpoint, if any."""
  if jax.process_count() > 1:  # every process must see the workdir before any of them writes to it
    multihost_utils.sync_global_devices("ae_jax: workdir checked")
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return state, LogWindow(), []
  reader = checkpoint.manager(workdir, config.keep_checkpoints)
  try:
    restored = checkpoint.restore_latest(reader, state, functools.partial(
        check_saved_run, config=config, workdir=workdir, steps_per_epoch=steps_per_epoch,
        allow_config_change=allow_config_change))
  finally:
    reader.close()
  if restored is None:
    return state, LogWindow(), []
  host_state, meta, unreadable = restored
  state = state.replace(**{k: getattr(host_state, k) for k in ("step", "params", "opt_state")})
  return state, LogWindow.from_meta(meta["log_window"]), unreadable


def _plug(registry: dict, name: str) -> dict:
  return {"name": name, "module": registry[name].module}


def run_record(workdir: str, config, ds: data.Dataset, devices, state, schedule: data.Schedule,
               start_step: int) -> dict:
  """run.json: what this invocation ran with; earlier invocations' records under 'previous'."""
  previous = []
  path = os.path.join(workdir, "run.json")
  if start_step and os.path.exists(path):
    with open(path) as f:
      earlier = json.load(f)
    previous = earlier.pop("previous", []) + [earlier]
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
      "data_on_device": config.data_on_device,
      "param_counts": {**{k: models.count_params(v) for k, v in state.params.items() if isinstance(v, dict)},
                       "total": models.count_params(state.params)},
      "steps_per_epoch": schedule.steps_per_epoch,
      "total_steps": schedule.total_steps,
      "resumed_from_step": start_step,
      "previous": previous,
  }


def compare_runs(a: str, b: str) -> dict:
  """Bit-level comparison of two finished runs' workdirs: final params, eval.json, metrics records.

  What a resumed or re-run run must equal (images/s, a timing, is left out of the records).
  """
  (step_a, state_a, _), (step_b, state_b, _) = checkpoint.read_latest(a), checkpoint.read_latest(b)
  leaves = zip(jax.tree.leaves(state_a["params"]), jax.tree.leaves(state_b["params"]))
  params_equal = step_a == step_b and all(np.array_equal(x, y) for x, y in leaves)
  with open(os.path.join(a, "eval.json")) as fa, open(os.path.join(b, "eval.json")) as fb:
    eval_equal = json.load(fa) == json.load(fb)

  def records(workdir):
    return [{k: v for k, v in r.items() if k != "images_per_sec"}
            for r in metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))]
  return {"step": [step_a, step_b], "params_bit_identical": bool(params_equal),
          "eval_json_identical": eval_equal, "metrics_identical": records(a) == records(b)}
