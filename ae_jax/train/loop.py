"""`train_and_evaluate`: every check, then the lock and the restore, then one loop over the compiled calls."""

import contextlib
import hashlib
import json
import os
import sys
import time

from absl import logging
import jax
import ml_collections
import numpy as np

from ae_jax import checkpoint, data, evaluation, faults, metrics, parallel, preemption
from ae_jax import config as config_lib
from ae_jax.data import transforms
from ae_jax.train import pictures, rundir
from ae_jax.train.logwindow import LogWindow
from ae_jax.train.state import create_train_state, eval_params, run_keys
from ae_jax.train.steps import bind_steps, build_model, evaluate, resolve_steps_per_call

HEALTH_SAMPLE = 256  # test images evaluation.health looks at
MEAN_IMAGE_SAMPLE = 10_000  # training images averaged for its trivial baseline


class Collapsed(FloatingPointError):
  """The model's outputs stopped depending on its input (eval.collapse='error')."""


def report(message: str, *args) -> None:
  """A progress line: through absl logging where it shows INFO (the entry points), else printed.

  So a notebook or a plain script sees progress without configuring logging.
  """
  if logging.level_info():
    logging.info(message, *args)
  else:
    print(message % args, flush=True)


def itstime(start: int, end: int, every: int) -> bool:
  """Whether a compiled call running steps (start, end] crosses a multiple of `every`."""
  return end // every > start // every


def _read_back(pending: list, place, window: LogWindow, mngr) -> None:
  """Reads the dispatched calls' metrics (one sync), checks them and adds them to the window."""
  calls = list(pending)
  pending.clear()
  for (first, _), m in zip(calls, place.get_metrics([dm for _, dm in calls])):
    bad = ~np.isfinite(m["loss"])
    if bad.any():
      raise FloatingPointError(f"loss is {m['loss'][bad.argmax()]} at step {first + int(bad.argmax()) + 1}; "
                               f"stopping (last checkpoint: {checkpoint.latest_saved(mngr)})")
    window.add(m)


def _report_first_step(device_metrics, started: float) -> None:
  """What a user waits before training runs (checks, data, restore, compile): one sync, once."""
  jax.block_until_ready(device_metrics)
  report("first step done %.1f s after train_and_evaluate started", time.perf_counter() - started)


def _log_progress(writer, window: LogWindow, step: int, schedule: data.Schedule, log_keys) -> None:
  means, steps_per_s, waited = window.flush()
  rate = steps_per_s * schedule.batch_size
  epoch = step / schedule.steps_per_epoch
  if writer:
    writer.write(step, "train", {**means, "images_per_sec": rate, "data_wait": waited, "epoch": epoch})
  shown = " ".join(f"{k} {means[f'train_{k}']:.5f}" for k in ("loss", *log_keys) if f"train_{k}" in means)
  eta = (schedule.total_steps - step) / steps_per_s
  report("step %d/%d (epoch %.2f) %s | %.0f img/s, data wait %.0f%% | ETA %s", step, schedule.total_steps,
         epoch, shown, rate, 100 * waited, time.strftime("%H:%M:%S", time.gmtime(eta)))


class _Evaluator:
  """The end-of-epoch eval of one run: metrics on the test split, the model's health, at the last step
  the final eval; recorded by the chief (eval.json, a metrics record, pictures, a log line)."""

  def __init__(self, workdir, config, writer, eval_fn, model, ds, corrupt, eval_key, init_params):
    self.workdir, self.config, self.writer, self.eval_fn = workdir, config, writer, eval_fn
    self.model, self.ds, self.corrupt, self.eval_key = model, ds, corrupt, eval_key
    self.sample = ds.test[:min(HEALTH_SAMPLE, len(ds.test))]
    self.mean_image = np.mean(transforms.to_float(ds.train[:min(MEAN_IMAGE_SAMPLE, len(ds.train))]), axis=0)
    self.init_spread = evaluation.output_spread(model, init_params, self.sample)

  def __call__(self, params, step: int, epoch: int, final: bool, record_metrics: bool = True) -> dict:
    result = evaluate(self.eval_fn, params, self.ds.test, self.eval_key, self.config.eval_batch_size)
    result.update(step=step, epoch=epoch)
    result.update(evaluation.health(self.model, params, self.sample, self.mean_image, self.init_spread))
    if final:
      result.update(evaluation.final(self.model, params, self.config, self.ds, self.eval_key))
    if self.writer:
      if record_metrics:
        self.writer.write(step, "eval", result)
      metrics.write_json(os.path.join(self.workdir, "eval.json"), result)
      pictures.save(self.workdir, self.model, params, self.ds.test, self.corrupt, self.eval_key,
                    self.config.num_images)
      report("eval at step %d (epoch %d): %s", step, epoch,
             ", ".join(f"{k} {v:.5f}" for k, v in result.items() if isinstance(v, float)))
    if result["collapsed"]:
      logging.warning("step %d: %s; a lower learning_rate or grad_clip_norm may help", step,
                      result["collapse_reason"])
      if self.config.eval.collapse == "error":
        raise Collapsed(f"the model collapsed at step {step}: {result['collapse_reason']} "
                        "(eval.collapse='error')")
    return result


def _checkpoint_meta(step: int, schedule: data.Schedule, window: LogWindow, config, data_sha256: str) -> dict:
  return {"step": step, "epoch": step // schedule.steps_per_epoch,
          "position_in_epoch": step % schedule.steps_per_epoch,
          "steps_per_epoch": schedule.steps_per_epoch, "batch_size": schedule.batch_size,
          "num_train": schedule.num_train, "log_window": window.to_meta(),
          "config": json.loads(config.to_json_best_effort()), "data_sha256": data_sha256}


def _eval_missing(workdir: str, step: int, records: list[dict]) -> tuple[bool, bool]:
  """(whether the eval at `step`, an epoch end, must be computed, whether metrics.jsonl lacks its record).

  A signal during an epoch end's eval (after its checkpoint) or a deleted
  eval.json leaves it to the rerun.
  """
  recorded = any(r["kind"] == "eval" and r["step"] == step for r in records)
  try:
    with open(os.path.join(workdir, "eval.json")) as f:
      current = json.load(f).get("step") == step
  except (OSError, json.JSONDecodeError):
    current = False
  return not (recorded and current), not recorded


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       allow_config_change: bool = False) -> dict:
  """Trains and evaluates per `config` in `workdir`, resuming from its latest checkpoint.

  Everything is checked before anything is written: the config, the workdir, the
  data, and (when resuming) that the saved run's config and data are compatible,
  unless allow_config_change, and that its side files can be read. Then the
  workdir is locked for this run alone. Returns the final eval metrics (also in
  WORKDIR/eval.json). Raises Preempted after checkpointing on SIGTERM/SIGINT/SIGHUP
  (in any process), faults.EnvironmentFault when the machine fails a write.
  """
  # Prepare: every check; nothing is written until all have passed.
  started = time.perf_counter()
  config_lib.import_plugins(config.plugins)
  config_lib.validate(config)
  rundir.check_workdir(workdir)
  devices = parallel.select_devices(config.num_devices if config.parallel != "jit" else 1,
                                    config.parallel)
  place = parallel.placement(config.parallel, devices, config.batch_size, config.model.shard,
                             config.model.shard_min_size)
  saved = checkpoint.latest_meta(workdir)  # refuse another run's workdir before loading and compiling
  if saved is not None:
    rundir.check_saved_run(saved, config, workdir, None, allow_config_change)
  ds = data.load(config.data)
  if config.batch_size > len(ds.train):
    raise ValueError(f"batch_size={config.batch_size}: larger than the {len(ds.train)} training examples")
  if config.data.binarize != "none" and ds.image_shape[-1] != 1:
    raise ValueError(f"data.binarize={config.data.binarize!r}: binarisation is for grey images, and "
                     f"{ds.source} has {ds.image_shape[-1]} channels; use data.binarize='none'")
  data_sha256 = ds.summary()["sha256"]
  model = build_model(config, ds.image_shape)
  keys = run_keys(config.seed)
  schedule = data.Schedule(keys["data"], len(ds.train), config.batch_size, config.num_epochs,
                           resolve_steps_per_call(config.steps_per_call))
  records = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"), drop_truncated_tail=True)
  previous = rundir.read_previous(workdir)

  with rundir.Lock(workdir):
    try:
      return _run(config, workdir, allow_config_change, started, devices, place, ds, data_sha256, model, keys,
                  schedule, records, previous)
    except Exception as e:  # pylint: disable=broad-except
      fault = faults.describe(e)
      if fault is None or isinstance(e, faults.EnvironmentFault):
        raise
      raise faults.EnvironmentFault(f"{fault} ({faults.first_line(e)}); the last complete checkpoint is "
                                    "kept: fix the machine and rerun the same command") from None


def _run(config, workdir, allow_config_change, started, devices, place, ds, data_sha256, model, keys,
         schedule, records, previous) -> dict:
  """Restore, then the loop (train_and_evaluate after its checks, with the workdir locked)."""
  initial = create_train_state(model, config, keys["init"], schedule.total_steps)
  state, window, unreadable = rundir.restore(workdir, config, initial, schedule.steps_per_epoch,
                                             allow_config_change, data_sha256)
  start_step = int(state.step)
  # In a multi-process run every process trains and checkpoints (Orbax writes
  # collectively); only process 0 writes metrics, pictures, eval.json and run.json.
  chief = jax.process_index() == 0
  steps = bind_steps(config, model)
  eval_fn = jax.jit(steps.eval)
  at_epoch_end = start_step > 0 and start_step % schedule.steps_per_epoch == 0
  redo_eval, redo_record = _eval_missing(workdir, start_step, records) if at_epoch_end else (False, False)
  if start_step >= schedule.total_steps and not redo_eval:  # a finished run: report it, write nothing
    report("nothing to do: checkpoint at step %d >= %d steps for %d epochs", start_step,
           schedule.total_steps, config.num_epochs)
    with open(os.path.join(workdir, "eval.json")) as f:
      return metrics.upgrade_eval(json.load(f))

  if chief:
    checkpoint.set_aside(workdir, unreadable)
    record = rundir.run_record(config, ds, devices, state, schedule, start_step,
                               previous if start_step else [])
    metrics.write_json(os.path.join(workdir, "run.json"), record)
    report("data %s: %d train / %d test, image shape %s; %s params; objective %s, model %s; %s on %d "
           "device(s) of %d process(es), conv_impl %s", ds.source, len(ds.train), len(ds.test),
           ds.image_shape, f"{record['param_counts']['total']:,}", config.objective, config.model.name,
           config.parallel, len(devices), jax.process_count(), record["conv_impl"])
  mngr = checkpoint.manager(workdir, config.keep_checkpoints)
  writer = metrics.Writer(workdir, start_step, records) if chief else None
  evaluator = _Evaluator(workdir, config, writer, eval_fn, model, ds, steps.corrupt, keys["eval"],
                         initial.params)
  failed = True
  try:
    with preemption.StopOnSignal() as stop:
      last_eval = None
      if redo_eval:  # the epoch end's eval a signal (or a deleted eval.json) left to this rerun
        report("evaluating the checkpoint at step %d: %s", start_step,
               "its eval was not recorded" if redo_record else "eval.json is missing or from another step")
        last_eval = _interruptible_eval(stop, evaluator, mngr, eval_params(state), start_step, schedule,
                                        redo_record, final=chief and start_step == schedule.total_steps
                                        and config.eval.final)
      if start_step < schedule.total_steps:
        last_eval = _loop(config, stop, mngr, writer, evaluator, place, steps, ds, keys, schedule, state,
                          window, start_step, started, chief, data_sha256)
    failed = False
  finally:
    _close(mngr, writer, failed)
  return last_eval


def _loop(config, stop, mngr, writer, evaluator, place, steps, ds, keys, schedule, state, window, start_step,
          started, chief, data_sha256) -> dict:
  """The compiled calls from start_step to the end: train, log, checkpoint, then evaluate each epoch end."""
  step = place.compile(steps.train, state)
  table = place.put_table({"image": ds.train[:]}) if data.on_device(config.data_on_device, ds.train) else None

  taken = hashlib.sha256()  # the indices of the examples this process fed, said at the end

  def read(call):  # this process's rows of each global batch: indices, or their images from the host
    rows = call.indices_KB[:, place.local_rows]
    taken.update(np.ascontiguousarray(rows, np.int64).tobytes())  # in call order: one reading thread
    return {"index": rows} if table is not None else {"image": ds.train[rows]}

  dstate, pending, last_eval = place.put_state(state), [], None
  ahead = data.prefetch(read, schedule.calls(start_step), on_wait=window.add_wait)
  with contextlib.closing(ahead):  # however the loop ends (a signal, a NaN), its thread stops reading
    for calls, (call, batches) in enumerate(ahead, 1):
      dstate, device_metrics = step(dstate, place.put_batches(batches), keys["train"], table)
      if calls == 1 and chief:
        _report_first_step(device_metrics, started)
      pending.append((call.start, device_metrics))
      stopping = stop.due(calls)
      last = call.end == schedule.total_steps
      log_now = itstime(call.start, call.end, config.log_every_steps) or last
      save_now = (call.epoch_done or last or stopping
                  or itstime(call.start, call.end, config.checkpoint_every_steps))
      if not (log_now or save_now):
        continue
      _read_back(pending, place, window, mngr)  # the host waits for the device only here
      if log_now:
        _log_progress(writer, window, call.end, schedule, steps.log_keys)
      if not save_now:
        continue
      host_state = place.get_state(dstate)
      # The checkpoint first: what comes after it (the eval) a rerun can redo from it.
      checkpoint.save(mngr, call.end, host_state, _checkpoint_meta(call.end, schedule, window, config,
                                                                   data_sha256))
      if stopping and not last:
        mngr.wait_until_finished()
        raise preemption.Preempted(stop.signum, call.end, mngr.directory)
      if call.epoch_done:
        last_eval = _interruptible_eval(stop, evaluator, mngr, eval_params(host_state), call.end, schedule,
                                        True, final=chief and last and config.eval.final)
        # The chief also wrote pictures and metrics (a first compile, too): meet before the next step's
        # collectives, which would wait only 30 s on XLA:CPU.
        parallel.wait_for_every_process(f"evaluated step {call.end}")
        window.restart_clock()  # eval time is not training throughput
  rows = place.local_rows
  logging.info("process %d of %d fed rows %d-%d of each global batch of steps %d-%d: %d training examples, "
               "sha256 of their indices %s", jax.process_index(), jax.process_count(), rows.start,
               rows.stop - 1, start_step + 1, schedule.total_steps,
               (schedule.total_steps - start_step) * (rows.stop - rows.start), taken.hexdigest())
  return last_eval


def _interruptible_eval(stop, evaluator, mngr, params, step: int, schedule, record_metrics: bool,
                        final: bool) -> dict:
  """The eval at an epoch end, after its checkpoint: a signal stops it at once, for the rerun to redo."""
  redo = f" (it evaluates step {step} from that checkpoint first)"

  def stop_now(signum):
    mngr.wait_until_finished()  # the checkpoint in flight is the one the rerun starts from
    if evaluator.writer:
      evaluator.writer.close()
    sys.stderr.write(f"error: {preemption.Preempted(signum, step, mngr.directory, redo)}\n")
    sys.stderr.flush()
    os._exit(128 + signum)  # not an exception: see preemption.py

  try:
    with stop.interruptible(stop_now):
      return evaluator(params, step, step // schedule.steps_per_epoch, final, record_metrics)
  except preemption.Interrupted as e:  # the signal came before the eval began
    mngr.wait_until_finished()
    raise preemption.Preempted(e.signum, step, mngr.directory, redo) from None


def _close(mngr, writer, failed: bool) -> None:
  """Waits for the save in flight and closes the sinks. After a failure, their own errors (a full
  disk again) are logged, not raised over the first one."""
  for close in (mngr.wait_until_finished, mngr.close, *([writer.close] if writer else [])):
    try:
      close()
    except Exception as e:  # pylint: disable=broad-except
      if not failed:
        raise
      logging.warning("while stopping: %s", faults.first_line(e))
