"""`train_and_evaluate`: every check, then the restore, then one loop over the compiled calls."""

import json
import os
import time

from absl import logging
import jax
import ml_collections
import numpy as np

from ae_jax import checkpoint, data, evaluation, metrics, parallel, preemption
from ae_jax import config as config_lib
from ae_jax.train import pictures, rundir
from ae_jax.train.logwindow import LogWindow
from ae_jax.train.state import create_train_state, eval_params, run_keys
from ae_jax.train.steps import bind_steps, build_model, evaluate, resolve_steps_per_call


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
      raise FloatingPointError(
          f"loss is {m['loss'][bad.argmax()]} at step {first + int(bad.argmax()) + 1}; "
          f"stopping (last checkpoint: step {mngr.latest_step()})")
    window.add(m)


def _report_first_step(device_metrics, started: float) -> None:
  """What a user waits before training runs (checks, data, restore, compile): one sync, once."""
  jax.block_until_ready(device_metrics)
  report("first step done %.1f s after train_and_evaluate started", time.perf_counter() - started)


def _log_progress(writer, window: LogWindow, step: int, schedule: data.Schedule, log_keys) -> None:
  means, steps_per_s = window.flush()
  rate = steps_per_s * schedule.batch_size
  epoch = step / schedule.steps_per_epoch
  if writer:
    writer.write(step, "train", {**means, "images_per_sec": rate, "epoch": epoch})
  shown = " ".join(f"{k} {means[f'train_{k}']:.5f}" for k in ("loss", *log_keys) if f"train_{k}" in means)
  eta = (schedule.total_steps - step) / steps_per_s
  report("step %d/%d (epoch %.2f) %s | %.0f img/s | ETA %s", step, schedule.total_steps, epoch, shown, rate,
         time.strftime("%H:%M:%S", time.gmtime(eta)))


def _epoch_eval(workdir: str, config, writer, eval_fn, model, params, ds, corrupt, eval_key,
                call: data.Call, final: bool) -> dict:
  """The end-of-epoch eval (and, at the last step, evaluation.final), recorded by the chief."""
  result = evaluate(eval_fn, params, ds.test, eval_key, config.eval_batch_size)
  result.update(step=call.end, epoch=call.epoch + 1)
  if final:
    result.update(evaluation.final(model, params, config, ds, eval_key))
  if writer:  # the chief: eval.json, a metrics record, the pictures and a log line
    writer.write(result["step"], "eval", result)
    metrics.write_json(os.path.join(workdir, "eval.json"), result)
    pictures.save(workdir, model, params, ds.test, corrupt, eval_key, config.num_images)
    report("eval at step %d (epoch %d): %s", result["step"], result["epoch"],
           ", ".join(f"{k} {v:.5f}" for k, v in result.items() if isinstance(v, float)))
  return result


def _checkpoint_meta(step: int, schedule: data.Schedule, window: LogWindow, config) -> dict:
  return {"step": step, "epoch": step // schedule.steps_per_epoch,
          "position_in_epoch": step % schedule.steps_per_epoch,
          "steps_per_epoch": schedule.steps_per_epoch, "batch_size": schedule.batch_size,
          "num_train": schedule.num_train, "log_window": window.to_meta(),
          "config": json.loads(config.to_json_best_effort())}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       allow_config_change: bool = False) -> dict:
  """Trains and evaluates per `config` in `workdir`, resuming from its latest checkpoint.

  Everything is checked before anything is written: the config, the workdir, the
  data, and (when resuming) that the saved run's config is compatible, unless
  allow_config_change. Returns the final eval metrics (also in WORKDIR/eval.json).
  Raises Preempted after checkpointing if SIGTERM/SIGINT arrives (in any process).
  """
  # Prepare: every check, then the restore; nothing is written until all passed.
  started = time.perf_counter()
  config_lib.import_plugins(config.plugins)
  config_lib.validate(config)
  rundir.check_workdir(workdir)
  devices = parallel.select_devices(config.num_devices if config.parallel != "jit" else 1,
                                    config.parallel)
  place = parallel.placement(config.parallel, devices, config.batch_size)
  saved = checkpoint.latest_meta(workdir)  # refuse another run's workdir before loading and compiling
  if saved is not None:
    rundir.check_saved_run(saved, config, workdir, None, allow_config_change)
  ds = data.load(config.data)
  if config.batch_size > len(ds.train):
    raise ValueError(f"batch_size={config.batch_size}: larger than the {len(ds.train)} training examples")
  model = build_model(config, ds.image_shape)
  keys = run_keys(config.seed)
  schedule = data.Schedule(keys["data"], len(ds.train), config.batch_size, config.num_epochs,
                           resolve_steps_per_call(config.steps_per_call))
  state, window, unreadable = rundir.restore(
      workdir, config, create_train_state(model, config, keys["init"], schedule.total_steps),
      schedule.steps_per_epoch, allow_config_change)
  start_step = int(state.step)
  if start_step >= schedule.total_steps:  # a finished run: report it, write nothing
    report("nothing to do: checkpoint at step %d >= %d steps for %d epochs", start_step,
           schedule.total_steps, config.num_epochs)
    with open(os.path.join(workdir, "eval.json")) as f:
      return metrics.upgrade_eval(json.load(f))

  # In a multi-process run every process trains and checkpoints (Orbax writes
  # collectively); only process 0 writes metrics, pictures, eval.json and run.json.
  chief = jax.process_index() == 0
  if chief:
    os.makedirs(workdir, exist_ok=True)
    checkpoint.set_aside(workdir, unreadable)
    record = rundir.run_record(workdir, config, ds, devices, state, schedule, start_step)
    metrics.write_json(os.path.join(workdir, "run.json"), record)
    report("data %s: %d train / %d test, image shape %s; %s params; objective %s, model %s; %s on %d "
           "device(s) of %d process(es), conv_impl %s", ds.source, len(ds.train), len(ds.test),
           ds.image_shape, f"{record['param_counts']['total']:,}", config.objective, config.model.name,
           config.parallel, len(devices), jax.process_count(), record["conv_impl"])
  mngr = checkpoint.manager(workdir, config.keep_checkpoints)
  writer = metrics.Writer(workdir, start_step) if chief else None
  steps = bind_steps(config, model)
  step, eval_fn = place.compile(steps.train), jax.jit(steps.eval)
  table = place.put_table({"image": ds.train[:]}) if config.data_on_device else None
  dstate, pending, last_eval = place.put_state(state), [], None

  try:
    with preemption.StopOnSignal() as stop:
      for calls, call in enumerate(schedule.calls(start_step), 1):
        rows = call.indices_KB[:, place.local_rows]  # this process's rows of each global batch
        batches = {"index": rows} if table is not None else {"image": ds.train[rows]}
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
        if call.epoch_done:
          final = chief and last and config.eval.final
          last_eval = _epoch_eval(workdir, config, writer, eval_fn, model, eval_params(host_state), ds,
                                  steps.corrupt, keys["eval"], call, final)
          window.restart_clock()  # eval time is not training throughput
        checkpoint.save(mngr, call.end, host_state, _checkpoint_meta(call.end, schedule, window, config))
        if stopping and not last:
          mngr.wait_until_finished()
          raise preemption.Preempted(stop.signum, call.end, mngr.directory)
  finally:
    mngr.wait_until_finished()  # an async save in flight completes (or fails) before exit
    mngr.close()
    if writer:
      writer.close()
  return last_eval
