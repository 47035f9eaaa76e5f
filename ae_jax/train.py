"""Train state, the pure train and eval steps, and `train_and_evaluate`: prepare, then one loop."""

import dataclasses
import functools
import importlib.metadata
import json
import os
import platform
import tempfile
import time
from typing import NamedTuple

from absl import logging
from flax.training import train_state
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ae_jax import (
  checkpoint,
  data,
  evaluation,
  layers,
  losses,
  metrics,
  models,
  noise,
  objectives,
  parallel,
  plots,
  preemption,
  probes,
)
from ae_jax import config as config_lib

TrainState = train_state.TrainState


def report(message: str, *args) -> None:
  """A progress line: through absl logging where it shows INFO (the entry points), else printed.

  So a notebook or a plain script sees progress without configuring logging.
  """
  if logging.level_info():
    logging.info(message, *args)
  else:
    print(message % args, flush=True)


def run_keys(seed: int) -> dict:
  """The run's named keys, split once from the root key: init, train, data (order), eval."""
  init, train_, data_, eval_ = jax.random.split(jax.random.key(seed), 4)
  return {"init": init, "train": train_, "data": data_, "eval": eval_}


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


class EmaState(NamedTuple):
  ema: optax.Params  # exponential moving average of the params after each update


def track_ema(decay: float) -> optax.GradientTransformation:
  """Last in a chain: passes the updates through and keeps an EMA of the updated params.

  ema_0 = the initial params; ema_t = decay * ema_{t-1} + (1 - decay) * params_t.
  Kept in the optimizer state, so it is checkpointed and resumed with it.
  """
  def init(params):
    return EmaState(ema=jax.tree.map(jnp.asarray, params))

  def update(updates, state, params):
    new = optax.apply_updates(params, updates)
    return updates, EmaState(jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema, new))
  return optax.GradientTransformation(init, update)


def learning_rate(cfg: ml_collections.ConfigDict, total_steps: int | None = None):
  """cfg.learning_rate, or a schedule over total_steps (warm-up from 0, then cosine to 0)."""
  if cfg.lr_schedule == "constant":
    return cfg.learning_rate
  if total_steps is None:
    raise ValueError(f"lr_schedule={cfg.lr_schedule!r}: needs the run's total steps")
  return optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, cfg.warmup_steps,
                                            max(total_steps, cfg.warmup_steps + 1), 0.0)


def make_optimizer(cfg: ml_collections.ConfigDict,
                   total_steps: int | None = None) -> optax.GradientTransformation:
  """cfg.optimizer with its learning rate (schedule), weight decay, gradient clipping and EMA."""
  lr = learning_rate(cfg, total_steps)
  if cfg.optimizer == "adam":
    tx = optax.adam(lr)  # Keras Adam defaults: b1 .9, b2 .999; eps differs (1e-7)
  elif cfg.optimizer == "adamw":  # decoupled weight decay; optax's 1e-4 when weight_decay is None
    tx = optax.adamw(lr) if cfg.weight_decay is None else optax.adamw(lr, weight_decay=cfg.weight_decay)
  elif cfg.optimizer == "sgd":
    tx = optax.sgd(lr)
  else:
    raise ValueError(f"optimizer={cfg.optimizer!r}: expected one of {config_lib.OPTIMIZERS}")
  parts = [optax.clip_by_global_norm(cfg.grad_clip_norm)] if cfg.grad_clip_norm else []
  parts.append(tx)
  if cfg.objective == "vqvae" and cfg.vq.ema_decay is not None:
    parts.append(objectives.vq_ema(cfg.vq.ema_decay))  # replaces the codebook's (zero-gradient) update
  if cfg.ema_decay is not None:
    parts.append(track_ema(cfg.ema_decay))
  return parts[0] if len(parts) == 1 else optax.chain(*parts)


def eval_params(state: TrainState):
  """The params to evaluate: their EMA when the optimizer keeps one (ema_decay), else the params."""
  ema = optax.tree_utils.tree_get(state.opt_state, "ema", None)
  return state.params if ema is None else ema


def create_train_state(model: models.Autoencoder, cfg: ml_collections.ConfigDict,
                       key: jax.Array, total_steps: int | None = None) -> TrainState:
  """Params from `key`, step 0, and make_optimizer(cfg, total_steps) (needed by lr schedules)."""
  params = models.init_params(model, key)
  state = TrainState.create(apply_fn=model.apply, params=params, tx=make_optimizer(cfg, total_steps))
  return state.replace(step=jnp.zeros((), jnp.int32))


def train_step(state: TrainState, batch: dict, train_key: jax.Array, *, objective,
               corrupt=None, binarize: bool = False,
               axis_name: str | None = None) -> tuple[TrainState, dict]:
  """One optimizer step of `objective` (objectives.py) on batch['image'] (x_BHWC, the clean target).

  The step key is fold_in(train_key, step); the target is binarised (binarize)
  and the input is corrupt(target), each with keys fold_in(step key's stream,
  global example index), so every draw depends only on (seed, step, global
  example index). Under pmap pass axis_name: gradients and metrics are
  averaged over it, the objective's optimizer statistics summed.
  """
  x_BHWC = batch["image"]
  local_b = x_BHWC.shape[0]
  first = 0 if axis_name is None else jax.lax.axis_index(axis_name) * local_b
  position_B = first + jnp.arange(local_b)
  step_key = jax.random.fold_in(train_key, state.step)
  noise_key, objective_key = objectives.split_step_key(step_key)
  if binarize:
    x_BHWC = objectives.binarize(step_key, x_BHWC, position_B)
  inputs_BHWC = x_BHWC if corrupt is None else noise.corrupt_batch(corrupt, noise_key, x_BHWC,
                                                                    position_B)
  batch = {"image": x_BHWC, "input": inputs_BHWC, "position": position_B, "step": state.step}

  def loss_fn(params):
    loss_B, metrics_B = objective(params, batch, objective_key)
    return jnp.mean(loss_B), metrics_B

  (_, metrics_B), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  optimizer_args = jax.tree.map(lambda v: jnp.sum(v, axis=0), metrics_B.pop(objectives.OPTIMIZER_ARGS, {}))
  step_metrics = jax.tree.map(jnp.mean, metrics_B)
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
    step_metrics = jax.lax.pmean(step_metrics, axis_name)
    optimizer_args = jax.lax.psum(optimizer_args, axis_name)
  if not optimizer_args:
    return state.apply_gradients(grads=grads), step_metrics
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params, **optimizer_args)
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       opt_state=opt_state), step_metrics


def eval_step(params, batch: dict, eval_key: jax.Array, *, objective, corrupt=None,
              binarize: bool = False) -> dict:
  """Sums over the valid examples (batch['mask']) of per-example metrics; divide by the count.

  `loss` and `recon_mse` come from the input as training feeds it (corrupted,
  for denoising: the denoised output vs the clean image). Denoising adds
  `corruption_mse` (corrupted input vs clean image: no model, the error to beat)
  and `recon_from_clean_mse` (the model fed clean images). batch['position'] is
  each example's index in the test split: example i is binarised and corrupted
  with keys from fold_in(eval_key's streams, i), the same draws at every eval.
  """
  x_BHWC = batch["image"]
  noise_key, objective_key = objectives.split_step_key(eval_key)
  if binarize:
    x_BHWC = objectives.binarize(eval_key, x_BHWC, batch["position"])

  def total(v_B):
    return jnp.sum(jnp.where(batch["mask"], v_B, 0.0))

  def run(inputs_BHWC):
    loss_B, m = objective(params, {"image": x_BHWC, "input": inputs_BHWC,
                                   "position": batch["position"]}, objective_key)
    return {"loss": total(loss_B), **{"recon_mse" if k == "mse" else k: total(v) for k, v in m.items()
                                      if k not in ("loss", objectives.OPTIMIZER_ARGS)}}

  if corrupt is None:
    return run(x_BHWC)
  noisy_BHWC = noise.corrupt_batch(corrupt, noise_key, x_BHWC, batch["position"])
  return {**run(noisy_BHWC), "recon_from_clean_mse": run(x_BHWC)["recon_mse"],
          "corruption_mse": total(jax.vmap(losses.mse)(noisy_BHWC, x_BHWC))}


def evaluate(eval_fn, params, images: np.ndarray, eval_key: jax.Array, batch_size: int) -> dict:
  """Dataset means of eval_fn's sums, with PSNRs; the last batch is padded and masked."""
  params = jax.device_put(params)  # once, not with every batch
  pending = []
  for start, x, valid in data.padded_batches(images, batch_size):
    index = start + np.arange(len(x))
    pending.append(eval_fn(params, {"image": x, "mask": index < start + valid, "position": index},
                           eval_key))
  sums = {}
  for batch_sums in jax.device_get(pending):  # one sync after all batches are dispatched
    for k, v in batch_sums.items():
      sums[k] = sums.get(k, 0.0) + float(v)
  out = {k: v / len(images) for k, v in sums.items()}
  out.update({f"{k[:-len('_mse')]}_psnr": float(losses.psnr(v)) for k, v in out.items()
              if k.endswith("_mse")})
  out["num_examples"] = len(images)
  return out


# Train steps per compiled call for steps_per_call=None, per backend, from
# `python -m experiments.benchmark --steps_per_call=1,8` (experiments/BENCHMARKS.md).
# XLA:CPU, 2 cores, reference AE, images/s at batch 128 / 32 (2026-11-24):
# subpixel K=1 1,580 / 1,617, K=8 116 / 164; matmul K=1 534 / 375, K=8 916 / 503.
# Inside a scan XLA:CPU does not hand convolutions to its fast library. GPU/TPU:
# not measured here (no accelerator was lent); 1 until someone measures there.
AUTO_STEPS_PER_CALL = {"cpu": 1}


def resolve_steps_per_call(steps_per_call: int | None, platform_: str | None = None) -> int:
  """None -> the measured choice for the platform (default: JAX's default backend)."""
  if steps_per_call is not None:
    return steps_per_call
  return AUTO_STEPS_PER_CALL.get(platform_ or jax.default_backend(), 1)


def compile_steps(config: ml_collections.ConfigDict, model, place):
  """(train step compiled by `place`, jitted eval step, corruption fn) of `config`'s objective."""
  objective = objectives.from_config(config, model.apply)
  corrupt = noise.corruption_fn(config.noise)
  binarize = config.data.binarize == "dynamic"
  step = place.compile(functools.partial(train_step, objective=objective, corrupt=corrupt,
                                         binarize=binarize))
  eval_fn = jax.jit(functools.partial(eval_step, objective=objective, corrupt=corrupt, binarize=binarize))
  return step, eval_fn, corrupt


def itstime(start: int, end: int, every: int) -> bool:
  """Whether a compiled call running steps (start, end] crosses a multiple of `every`."""
  return end // every > start // every


@dataclasses.dataclass(frozen=True)
class Call:
  """One compiled call: steps start+1 .. end of `epoch`, and the examples each step takes."""

  start: int
  end: int
  epoch: int
  epoch_done: bool
  indices_KB: np.ndarray  # int32: row k holds step start+k+1's global batch


class Schedule:
  """The compiled calls of a run, a function of the position alone.

  A call holds K = steps_per_call steps, cut at the epoch's end; the examples of
  an epoch are in data.epoch_order(data_key, epoch). A run resumed at any call
  end therefore runs exactly the calls an uninterrupted run does.
  """

  def __init__(self, data_key: jax.Array, num_train: int, batch_size: int, num_epochs: int,
               steps_per_call: int):
    self.data_key, self.num_train, self.batch_size = data_key, num_train, batch_size
    self.steps_per_epoch = num_train // batch_size  # the remainder is dropped; each epoch reshuffles
    self.total_steps = num_epochs * self.steps_per_epoch
    self.steps_per_call = steps_per_call

  def end_of_call(self, start: int) -> int:
    epoch_start = start // self.steps_per_epoch * self.steps_per_epoch
    pos = start - epoch_start
    return epoch_start + min(self.steps_per_epoch, (pos // self.steps_per_call + 1) * self.steps_per_call)

  def calls(self, start: int):
    """Yields the Calls from step `start` to the end of the run."""
    epoch, order = -1, None
    while start < self.total_steps:
      end = self.end_of_call(start)
      if start // self.steps_per_epoch != epoch:
        epoch = start // self.steps_per_epoch
        order = data.epoch_order(self.data_key, epoch, self.num_train)
      first = start - epoch * self.steps_per_epoch
      idx = order[first * self.batch_size:(end - epoch * self.steps_per_epoch) * self.batch_size]
      yield Call(start, end, epoch, end % self.steps_per_epoch == 0,
                 idx.reshape(end - start, self.batch_size).astype(np.int32))
      start = end


class LogWindow:
  """Train metrics since the last log line; survives a restart through the checkpoint's meta."""

  def __init__(self, steps: int = 0, sums: dict | None = None):
    self.steps, self.sums = steps, dict(sums or {})
    self.restart_clock()

  def restart_clock(self) -> None:
    """Throughput counts from now (after compiling, evaluating or restoring)."""
    self._t, self._timed = time.perf_counter(), 0

  def add(self, metrics_K: dict) -> None:
    """Adds K steps' metrics (numpy [K] each)."""
    k = len(next(iter(metrics_K.values())))
    self.steps += k
    self._timed += k
    for name, v in metrics_K.items():
      self.sums[name] = self.sums.get(name, 0.0) + float(np.sum(v, dtype=np.float64))

  def flush(self) -> tuple[dict, float]:
    """(mean of each metric as 'train_<name>', steps/s), and an empty window."""
    means = {f"train_{name}": s / self.steps for name, s in self.sums.items()}
    rate = self._timed / (time.perf_counter() - self._t)
    self.__init__()
    return means, rate

  def to_meta(self) -> dict:
    return {"steps": self.steps, "sums": dict(self.sums)}

  @classmethod
  def from_meta(cls, meta: dict) -> "LogWindow":
    return cls(meta["steps"], meta["sums"])


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


def _check_saved_run(meta: dict, config, workdir: str, steps_per_epoch: int | None,
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


def _restore(workdir: str, config, state: TrainState, steps_per_epoch: int,
             allow_config_change: bool):
  """(state, window, unreadable steps) from the workdir's latest readable checkpoint, if any."""
  if jax.process_count() > 1:  # every process must see the workdir before any of them writes to it
    multihost_utils.sync_global_devices("ae_jax: workdir checked")
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return state, LogWindow(), []
  reader = checkpoint.manager(workdir, config.keep_checkpoints)
  try:
    restored = checkpoint.restore_latest(reader, state, functools.partial(
        _check_saved_run, config=config, workdir=workdir, steps_per_epoch=steps_per_epoch,
        allow_config_change=allow_config_change))
  finally:
    reader.close()
  if restored is None:
    return state, LogWindow(), []
  host_state, meta, unreadable = restored
  state = state.replace(**{k: getattr(host_state, k) for k in ("step", "params", "opt_state")})
  return state, LogWindow.from_meta(meta["log_window"]), unreadable


def _run_record(workdir: str, config, ds: data.Dataset, devices, state, schedule: Schedule,
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
      "versions": _versions(),
      "data": ds.summary(),
      "devices": [str(d) for d in devices],
      "processes": jax.process_count(),
      "parallel": config.parallel,
      "conv_impl": layers.resolve(config.model.conv_impl),
      "steps_per_call": schedule.steps_per_call,
      "data_on_device": config.data_on_device,
      "param_counts": {"encoder": models.count_params(state.params["encoder"]),
                       "decoder": models.count_params(state.params["decoder"]),
                       "total": models.count_params(state.params)},
      "steps_per_epoch": schedule.steps_per_epoch,
      "total_steps": schedule.total_steps,
      "resumed_from_step": start_step,
      "previous": previous,
  }


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


def _log_progress(writer, window: LogWindow, step: int, schedule: Schedule) -> None:
  means, steps_per_s = window.flush()
  rate = steps_per_s * schedule.batch_size
  epoch = step / schedule.steps_per_epoch
  if writer:
    writer.write(step, "train", {**means, "images_per_sec": rate, "epoch": epoch})
  eta = (schedule.total_steps - step) / steps_per_s
  report("step %d/%d (epoch %.2f) loss %.5f mse %.5f | %.0f img/s | ETA %s", step,
         schedule.total_steps, epoch, means["train_loss"], means["train_mse"], rate,
         time.strftime("%H:%M:%S", time.gmtime(eta)))


def _record_eval(workdir: str, writer, result: dict, model, params, ds, corrupt, eval_key,
                 num_images: int) -> None:
  """eval.json, a metrics record, the pictures and a log line for one eval (chief only)."""
  writer.write(result["step"], "eval", result)
  metrics.write_json(os.path.join(workdir, "eval.json"), result)
  _save_pictures(workdir, model, params, ds, corrupt, eval_key, num_images)
  report("eval at step %d (epoch %d): %s", result["step"], result["epoch"],
         ", ".join(f"{k} {v:.5f}" for k, v in result.items()
                   if k.endswith(("mse", "psnr", "loss", "elbo", "kl", "nll", "ssim", "distance", "floor"))))


def _epoch_eval(workdir: str, config, writer, eval_fn, model, params, ds, corrupt, eval_key, call: Call,
                final: bool) -> dict:
  """The end-of-epoch eval (and, at the last step, evaluation.final), recorded by the chief."""
  result = evaluate(eval_fn, params, ds.test_x, eval_key, config.eval_batch_size)
  result.update(step=call.end, epoch=call.epoch + 1)
  if final:
    result.update(evaluation.final(model, params, config, ds, eval_key))
  if writer:  # the chief
    _record_eval(workdir, writer, result, model, params, ds, corrupt, eval_key, config.num_images)
  return result


def _save_pictures(workdir: str, model, params, ds: data.Dataset, corrupt, eval_key, n: int):
  index = np.linspace(0, len(ds.test_x) - 1, min(n, len(ds.test_x))).astype(np.int32)
  x = ds.test_x[index]
  plots.image_rows(os.path.join(workdir, "reconstructions.png"),
                   [x, probes.reconstruct(model, params, x)], ["input", "reconstruction"],
                   "clean test inputs and their reconstructions")
  if model.latent == "gaussian":  # samples from the prior
    plots.image_rows(os.path.join(workdir, "samples.png"),
                     [probes.sample(model, params, n, seed=k)[0] for k in range(2)], ["prior", "prior"],
                     "decoded samples z ~ N(0, I)")
  if corrupt is not None:
    noisy = np.asarray(noise.corrupt_batch(corrupt, eval_key, jnp.asarray(x), index))  # eval noise
    plots.image_rows(os.path.join(workdir, "denoising.png"),
                     [x, noisy, probes.reconstruct(model, params, noisy)],
                     ["clean", "corrupted", "reconstructed"], "denoising (fixed eval noise)")


def _checkpoint_meta(step: int, schedule: Schedule, window: LogWindow, config) -> dict:
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
  config_lib.validate(config)
  check_workdir(workdir)
  devices = parallel.select_devices(config.num_devices if config.parallel != "jit" else 1,
                                    config.parallel)
  parallel.check_batch(config.batch_size, devices, config.parallel)
  saved = checkpoint.latest_meta(workdir)  # refuse another run's workdir before loading and compiling
  if saved is not None:
    _check_saved_run(saved, config, workdir, None, allow_config_change)
  ds = data.load(config.data)
  if config.batch_size > len(ds.train_x):
    raise ValueError(f"batch_size={config.batch_size}: larger than the {len(ds.train_x)} "
                     "training examples")
  model = models.from_config(config, ds.image_shape)
  keys = run_keys(config.seed)
  schedule = Schedule(keys["data"], len(ds.train_x), config.batch_size, config.num_epochs,
                      resolve_steps_per_call(config.steps_per_call))
  state, window, unreadable = _restore(
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
    record = _run_record(workdir, config, ds, devices, state, schedule, start_step)
    metrics.write_json(os.path.join(workdir, "run.json"), record)
    report("data %s: %d train / %d test, image shape %s; %s params; %s on %d device(s) of "
           "%d process(es), conv_impl %s", ds.source, len(ds.train_x), len(ds.test_x),
           ds.image_shape, f"{record['param_counts']['total']:,}", config.parallel,
           len(devices), jax.process_count(), record["conv_impl"])
  mngr = checkpoint.manager(workdir, config.keep_checkpoints)
  writer = metrics.Writer(workdir, start_step) if chief else None
  place = parallel.placement(config.parallel, devices, config.batch_size)
  step, eval_fn, corrupt = compile_steps(config, model, place)
  table = place.put_table({"image": ds.train_x}) if config.data_on_device else None
  dstate, pending, last_eval = place.put_state(state), [], None

  try:
    with preemption.StopOnSignal() as stop:
      for calls, call in enumerate(schedule.calls(start_step), 1):
        rows = call.indices_KB[:, place.local_rows]  # this process's rows of each global batch
        batches = {"index": rows} if table is not None else {"image": ds.train_x[rows]}
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
          _log_progress(writer, window, call.end, schedule)
        if not save_now:
          continue
        host_state = place.get_state(dstate)
        if call.epoch_done:
          last_eval = _epoch_eval(workdir, config, writer, eval_fn, model, eval_params(host_state), ds,
                                  corrupt, keys["eval"], call, final=chief and last and config.eval.final)
          window.restart_clock()  # eval time is not training throughput
        checkpoint.save(mngr, call.end, host_state,
                        _checkpoint_meta(call.end, schedule, window, config))
        if stopping and not last:
          mngr.wait_until_finished()
          raise preemption.Preempted(stop.signum, call.end, mngr.directory)
  finally:
    mngr.wait_until_finished()  # an async save in flight completes (or fails) before exit
    mngr.close()
    if writer:
      writer.close()
  return last_eval
