"""Train state, the pure train and eval steps, and `train_and_evaluate`."""

import functools
import importlib.metadata
import json
import os
import platform
import signal
import tempfile
import threading
import time

from absl import logging
from flax.training import train_state
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ae_jax import checkpoint, data, layers, losses, metrics, models, noise, parallel, plots, probes
from ae_jax import config as config_lib

TrainState = train_state.TrainState


class Preempted(Exception):
  """Training stopped on SIGTERM/SIGINT after checkpointing the current step."""

  def __init__(self, signum: int, step: int, directory: str):
    self.signum, self.step = signum, step
    super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}: checkpoint saved "
                     f"in {directory}; rerun the same command to continue")


class _StopOnSignal:
  """Turns SIGTERM/SIGINT into a flag the loop checks between compiled calls; a second one aborts."""

  def __init__(self):
    self.signum = None
    self._old = {}

  def _handle(self, signum, frame):
    if self.signum is not None:  # asked twice: stop now, without the checkpoint
      signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
      raise KeyboardInterrupt
    self.signum = signum
    logging.warning("received %s: stopping after the current call and checkpointing",
                    signal.Signals(signum).name)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in (signal.SIGTERM, signal.SIGINT):
        self._old[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, old in self._old.items():
      signal.signal(s, old)


def run_keys(seed: int) -> dict:
  """The run's named keys, split once from the root key: init, train, data (order), eval."""
  init, train_, data_, eval_ = jax.random.split(jax.random.key(seed), 4)
  return {"init": init, "train": train_, "data": data_, "eval": eval_}


def check_workdir(workdir: str) -> None:
  """Raises ValueError unless workdir is (or can be made) a writable directory.

  Probes with a temporary file or folder that is removed again, since permission
  bits do not bind root.
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


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  if cfg.optimizer == "adam":
    return optax.adam(cfg.learning_rate)  # Keras Adam defaults: b1 .9, b2 .999; eps differs (1e-7)
  if cfg.optimizer == "adamw":
    return optax.adamw(cfg.learning_rate)
  if cfg.optimizer == "sgd":
    return optax.sgd(cfg.learning_rate)
  raise ValueError(f"optimizer={cfg.optimizer!r}: expected one of {config_lib.OPTIMIZERS}")


def create_train_state(model: models.Autoencoder, cfg: ml_collections.ConfigDict,
                       key: jax.Array) -> TrainState:
  params = models.init_params(model, key)
  state = TrainState.create(apply_fn=model.apply, params=params, tx=make_optimizer(cfg))
  return state.replace(step=jnp.zeros((), jnp.int32))


def train_step(state: TrainState, batch: dict, train_key: jax.Array, *, loss: str,
               corrupt=None, axis_name: str | None = None) -> tuple[TrainState, dict]:
  """One optimizer step on batch['image'] (x_BHWC, the clean target).

  The input is corrupt(x) with per-example keys from fold_in(train_key, step), so
  the noise depends only on (seed, step, global example index). Under pmap pass
  axis_name: gradients and metrics are averaged over it.
  """
  x_BHWC = batch["image"]
  inputs_BHWC = x_BHWC
  if corrupt is not None:
    noise_key = jax.random.fold_in(train_key, state.step)
    local_b = x_BHWC.shape[0]
    first = 0 if axis_name is None else jax.lax.axis_index(axis_name) * local_b
    inputs_BHWC = noise.corrupt_batch(corrupt, noise_key, x_BHWC, first + jnp.arange(local_b))

  def loss_fn(params):
    logits_BHWC = state.apply_fn({"params": params}, inputs_BHWC, method="logits")
    return losses.reconstruction_loss(loss, logits_BHWC, x_BHWC), logits_BHWC

  (loss_value, logits_BHWC), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  step_metrics = {"loss": loss_value, "mse": losses.mse(jax.nn.sigmoid(logits_BHWC), x_BHWC)}
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
    step_metrics = jax.lax.pmean(step_metrics, axis_name)
  return state.apply_gradients(grads=grads), step_metrics


def eval_step(params, x_BHWC: jax.Array, mask_B: jax.Array, eval_key: jax.Array, first_index,
              *, apply_fn, loss: str, corrupt=None) -> dict:
  """Per-batch sums of per-example means (divide by the example count for dataset means)."""
  per_example_mse = jax.vmap(losses.mse)
  per_example_loss = jax.vmap(functools.partial(losses.reconstruction_loss, loss))

  def total(v_B):
    return jnp.sum(jnp.where(mask_B, v_B, 0.0))

  clean_logits = apply_fn({"params": params}, x_BHWC, method="logits")
  if corrupt is None:
    return {"test_loss": total(per_example_loss(clean_logits, x_BHWC)),
            "test_mse": total(per_example_mse(jax.nn.sigmoid(clean_logits), x_BHWC))}
  index_B = first_index + jnp.arange(x_BHWC.shape[0])
  noisy_BHWC = noise.corrupt_batch(corrupt, eval_key, x_BHWC, index_B)
  noisy_logits = apply_fn({"params": params}, noisy_BHWC, method="logits")
  return {
      "test_loss": total(per_example_loss(noisy_logits, x_BHWC)),
      "noisy_input_mse": total(per_example_mse(noisy_BHWC, x_BHWC)),
      "denoised_mse": total(per_example_mse(jax.nn.sigmoid(noisy_logits), x_BHWC)),
      "clean_input_mse": total(per_example_mse(jax.nn.sigmoid(clean_logits), x_BHWC)),
  }


def evaluate(eval_fn, params, images: np.ndarray, eval_key: jax.Array, batch_size: int) -> dict:
  """Dataset means of eval_fn's sums, with PSNRs; the last batch is padded and masked."""
  n = len(images)
  batch_size = min(batch_size, n)
  params = jax.device_put(params)  # once, not with every batch
  pending = []
  for start in range(0, n, batch_size):
    x = images[start:start + batch_size]
    valid = len(x)
    if valid < batch_size:  # pad so every batch has one shape: one compilation
      x = np.concatenate([x, np.zeros((batch_size - valid, *x.shape[1:]), x.dtype)])
    mask = np.arange(batch_size) < valid
    pending.append(eval_fn(params, x, mask, eval_key, start))
  sums = {}
  for batch_sums in jax.device_get(pending):  # one sync after all batches are dispatched
    for k, v in batch_sums.items():
      sums[k] = sums.get(k, 0.0) + float(v)
  out = {k: v / n for k, v in sums.items()}
  if "denoised_mse" in out:
    out["test_mse"] = out["denoised_mse"]
    for k in ("noisy_input", "denoised", "clean_input"):
      out[f"{k}_psnr"] = float(losses.psnr(out[f"{k}_mse"]))
  out["test_psnr"] = float(losses.psnr(out["test_mse"]))
  out["num_examples"] = n
  return out


def _versions() -> dict:
  names = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "tensorflow-datasets",
           "numpy", "ml_collections")
  out = {"python": platform.python_version()}
  for name in names:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def _save_pictures(workdir: str, model, params, ds: data.Dataset, corrupt, eval_key, n: int):
  index = np.linspace(0, len(ds.test_x) - 1, min(n, len(ds.test_x))).astype(np.int32)
  x = ds.test_x[index]
  plots.image_rows(os.path.join(workdir, "reconstructions.png"),
                   [x, probes.reconstruct(model, params, x)], ["input", "reconstruction"],
                   "clean test inputs and their reconstructions")
  if corrupt is not None:
    noisy = np.asarray(noise.corrupt_batch(corrupt, eval_key, jnp.asarray(x), index))  # eval noise
    plots.image_rows(os.path.join(workdir, "denoising.png"),
                     [x, noisy, probes.reconstruct(model, params, noisy)],
                     ["clean", "corrupted", "reconstructed"], "denoising (fixed eval noise)")


# Train steps per compiled call for steps_per_call=None, per backend, from
# `python -m experiments.benchmark --steps_per_call=1,8` (experiments/BENCHMARKS.md).
# XLA:CPU, 2 cores, reference AE, images/s at batch 128 / 32 (2026-11-24):
# subpixel K=1 1,580 / 1,617, K=8 116 / 164; matmul K=1 534 / 375, K=8 916 / 503.
# Inside a scan XLA:CPU does not hand convolutions to its fast library. GPU/TPU:
# not measured here (no accelerator was lent); 1 until someone measures there.
AUTO_STEPS_PER_CALL = {"cpu": 1}


def resolve_steps_per_call(steps_per_call: int | None, platform: str | None = None) -> int:
  """None -> the measured choice for `platform` (default: JAX's default backend)."""
  if steps_per_call is not None:
    return steps_per_call
  return AUTO_STEPS_PER_CALL.get(platform or jax.default_backend(), 1)


def _chunk_end(step: int, steps_per_epoch: int, steps_per_call: int) -> int:
  """End of the compiled call starting at `step`: K steps, cut at the epoch's end.

  Chunks are a function of the position in the epoch only, so a run resumed
  at any chunk end compiles and runs exactly the calls an uninterrupted run does.
  """
  epoch_start = step // steps_per_epoch * steps_per_epoch
  pos = step - epoch_start
  return epoch_start + min(steps_per_epoch, (pos // steps_per_call + 1) * steps_per_call)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       allow_config_change: bool = False) -> dict:
  """Trains and evaluates per `config` in `workdir`, resuming from its latest checkpoint.

  Everything is checked before anything is written: the config, the workdir, the
  data, and (when resuming) that the saved run's config is compatible, unless
  allow_config_change. Returns the final eval metrics (also in WORKDIR/eval.json).
  Raises Preempted after checkpointing if SIGTERM/SIGINT arrives.
  """
  config_lib.validate(config)
  check_workdir(workdir)
  devices = parallel.select_devices(config.num_devices if config.parallel != "jit" else 1,
                                    config.parallel)
  # In a multi-process run every process trains and checkpoints (Orbax writes
  # collectively); only process 0 writes metrics, pictures, eval.json and run.json.
  chief = jax.process_index() == 0
  parallel.check_batch(config.batch_size, devices, config.parallel)
  ds = data.load(config.data)
  n_train = len(ds.train_x)
  steps_per_epoch = n_train // config.batch_size  # the remainder is dropped, as a new order comes each epoch
  if steps_per_epoch == 0:
    raise ValueError(f"batch_size={config.batch_size}: larger than the {n_train} training examples")
  total_steps = config.num_epochs * steps_per_epoch

  model = models.from_config(config.model, ds.image_shape)
  corrupt = noise.corruption_fn(config.noise)
  keys = run_keys(config.seed)
  train_key, data_key, eval_key = keys["train"], keys["data"], keys["eval"]
  state = create_train_state(model, config, keys["init"])

  def check_meta(meta):
    conflicts = config_lib.resume_conflicts(meta["config"], config)
    reshaping = [c for c in conflicts
                 if c.startswith("model.") and not c.startswith(config_lib.PARAM_NEUTRAL)]
    if reshaping:
      raise ValueError(
          f"workdir={workdir!r} holds a model of another shape ({'; '.join(reshaping)}): its "
          "parameters cannot be loaded into this one, even with --allow_config_change; use a new workdir")
    if conflicts and not allow_config_change:
      raise ValueError(
          f"workdir={workdir!r} holds a run with another config ({'; '.join(conflicts)}): use a "
          "new workdir, or pass --allow_config_change to continue it with this config")
    if meta["steps_per_epoch"] != steps_per_epoch or meta["batch_size"] != config.batch_size:
      raise ValueError(
          f"workdir={workdir!r} holds a run with batch_size={meta['batch_size']} and "
          f"{meta['steps_per_epoch']} steps/epoch; this config has batch_size={config.batch_size} "
          f"and {steps_per_epoch}: use a new workdir")

  start_step, log_window, restored, unreadable = 0, {"steps": 0, "sums": {}}, None, []
  has_checkpoints = os.path.isdir(os.path.join(workdir, "checkpoints"))
  if jax.process_count() > 1:  # every process must see the workdir before any of them writes to it
    multihost_utils.sync_global_devices("ae_jax: workdir checked")
  if has_checkpoints:
    reader = checkpoint.manager(workdir, config.keep_checkpoints)
    try:
      restored = checkpoint.restore_latest(reader, state, check_meta)
    finally:
      reader.close()
  if restored is not None:
    host_state, meta, unreadable = restored
    state = state.replace(**{k: getattr(host_state, k) for k in ("step", "params", "opt_state")})
    start_step = int(host_state.step)
    log_window = meta["log_window"]  # the partial mean since the last log line

  eval_path = os.path.join(workdir, "eval.json")
  if start_step >= total_steps:  # a finished run: report it, write nothing
    logging.info("nothing to do: checkpoint at step %d >= %d steps for %d epochs", start_step,
                 total_steps, config.num_epochs)
    with open(eval_path) as f:
      return json.load(f)

  # All checks passed: from here on the workdir is written.
  if chief:
    os.makedirs(workdir, exist_ok=True)
    checkpoint.set_aside(workdir, unreadable)
  mngr = checkpoint.manager(workdir, config.keep_checkpoints)
  n_params = {"encoder": models.count_params(state.params["encoder"]),
              "decoder": models.count_params(state.params["decoder"]),
              "total": models.count_params(state.params)}
  steps_per_call = resolve_steps_per_call(config.steps_per_call)
  run_path = os.path.join(workdir, "run.json")
  previous = []
  if start_step and os.path.exists(run_path):  # keep what earlier invocations recorded
    with open(run_path) as f:
      earlier = json.load(f)
    previous = earlier.pop("previous", []) + [earlier]
  run_record = {
      "config": json.loads(config.to_json_best_effort()),
      "versions": _versions(),
      "data": ds.summary(),
      "devices": [str(d) for d in devices],
      "processes": jax.process_count(),
      "parallel": config.parallel,
      "conv_impl": layers.resolve(config.model.conv_impl),
      "steps_per_call": steps_per_call,
      "data_on_device": config.data_on_device,
      "param_counts": n_params,
      "steps_per_epoch": steps_per_epoch,
      "total_steps": total_steps,
      "resumed_from_step": start_step,
      "previous": previous,
  }
  if chief:
    metrics.write_json(run_path, run_record)
  logging.info("data %s: %d train / %d test, image shape %s", ds.source, n_train,
               len(ds.test_x), ds.image_shape)
  logging.info("model: %s params (encoder %s, decoder %s); %s on %d device(s) of %d process(es), "
               "conv_impl %s", f"{n_params['total']:,}", f"{n_params['encoder']:,}",
               f"{n_params['decoder']:,}", config.parallel, len(devices), jax.process_count(),
               run_record["conv_impl"])

  step_fn = functools.partial(train_step, loss=config.loss, corrupt=corrupt)
  runner = parallel.make_runner(config.parallel, step_fn, devices, config.batch_size)
  table = runner.put_table({"image": ds.train_x}) if config.data_on_device else None
  eval_fn = jax.jit(functools.partial(eval_step, apply_fn=model.apply, loss=config.loss,
                                      corrupt=corrupt))
  writer = metrics.Writer(workdir, start_step) if chief else None
  dstate = runner.put_state(state)

  step, order_epoch, order = start_step, -1, None
  window = {"t": time.perf_counter(), "timed": 0, **log_window}  # timed: steps run since t
  last_eval = None
  pending = []  # (first step, device metrics) of the calls not yet read back

  def drain_all():
    """Reads back every pending call's metrics (one sync), then logs them in order."""
    calls = list(pending)
    pending.clear()
    for (first, _), m in zip(calls, runner.get_metrics([dm for _, dm in calls])):
      drain(first, m)

  def drain(first, m):
    """Host side of a finished call: check finiteness, log on crossing log_every_steps."""
    k = len(m["loss"])
    bad = ~np.isfinite(m["loss"])
    if bad.any():
      raise FloatingPointError(
          f"loss is {m['loss'][bad.argmax()]} at step {first + int(bad.argmax()) + 1}; "
          f"stopping (last checkpoint: step {mngr.latest_step()})")
    window["steps"] += k
    window["timed"] += k
    for name, v in m.items():
      window["sums"][name] = window["sums"].get(name, 0.0) + float(np.sum(v, dtype=np.float64))
    end = first + k
    if end // config.log_every_steps > first // config.log_every_steps or end == total_steps:
      now = time.perf_counter()
      rate = window["timed"] * config.batch_size / (now - window["t"])
      means = {f"train_{n}": s / window["steps"] for n, s in window["sums"].items()}
      if writer:
        writer.write(end, "train", {**means, "images_per_sec": rate, "epoch": end / steps_per_epoch})
      eta = (total_steps - end) * config.batch_size / rate
      logging.info("step %d/%d (epoch %.2f) loss %.5f mse %.5f | %.0f img/s | ETA %s", end,
                   total_steps, end / steps_per_epoch, means["train_loss"], means["train_mse"],
                   rate, time.strftime("%H:%M:%S", time.gmtime(eta)))
      window.update(t=now, timed=0, steps=0, sums={})

  try:
    with _StopOnSignal() as stop:
      while step < total_steps:
        epoch = step // steps_per_epoch
        if epoch != order_epoch:
          order, order_epoch = data.epoch_order(data_key, epoch, n_train), epoch
        end = _chunk_end(step, steps_per_epoch, steps_per_call)
        pos = step - epoch * steps_per_epoch
        idx = order[pos * config.batch_size:(end - epoch * steps_per_epoch) * config.batch_size]
        idx = idx.reshape(end - step, config.batch_size)[:, runner.local_rows]  # this process's rows
        batches = {"index": idx.astype(np.int32)} if table is not None else {"image": ds.train_x[idx]}
        dstate, device_metrics = runner.step(dstate, runner.put_batches(batches), train_key, table)
        pending.append((step, device_metrics))
        epoch_done = end % steps_per_epoch == 0
        save_due = end // config.checkpoint_every_steps > step // config.checkpoint_every_steps
        log_due = end // config.log_every_steps > step // config.log_every_steps
        step = end
        if log_due:  # the host waits for the device only here and before a save
          drain_all()
        if not (epoch_done or save_due or step == total_steps or stop.signum):
          continue
        drain_all()
        host_state = runner.get_state(dstate)
        if epoch_done:
          last_eval = evaluate(eval_fn, host_state.params, ds.test_x, eval_key,
                               config.eval_batch_size)
          last_eval.update(step=step, epoch=step // steps_per_epoch)
          if chief:
            writer.write(step, "eval", last_eval)
            metrics.write_json(eval_path, last_eval)
            _save_pictures(workdir, model, host_state.params, ds, corrupt, eval_key,
                           config.num_images)
          logging.info("eval at step %d (epoch %d): %s", step, step // steps_per_epoch,
                       ", ".join(f"{k} {v:.5f}" for k, v in last_eval.items()
                                 if k.endswith(("mse", "psnr", "loss"))))
          window.update(t=time.perf_counter(), timed=0)  # eval time is not training throughput
        checkpoint.save(mngr, step, host_state, {
            "step": step, "epoch": step // steps_per_epoch,
            "position_in_epoch": step % steps_per_epoch, "steps_per_epoch": steps_per_epoch,
            "batch_size": config.batch_size, "num_train": n_train,
            "log_window": {"steps": window["steps"], "sums": window["sums"]},
            "config": json.loads(config.to_json_best_effort())})
        if stop.signum is not None and step < total_steps:
          mngr.wait_until_finished()
          raise Preempted(stop.signum, step, mngr.directory)
  finally:
    mngr.wait_until_finished()  # an async save in flight completes (or fails) before exit
    mngr.close()
    if writer:
      writer.close()
  return last_eval
