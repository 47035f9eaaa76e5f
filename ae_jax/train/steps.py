"""The pure train and eval steps, and `bind_steps`: the one place a config's objective, corruption
and binarisation are bound to them (for the loop, compare, notebooks, tools and your own loop)."""

from collections.abc import Callable
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ae_jax import losses, models, objectives
from ae_jax.data import sampler, transforms
from ae_jax.train.state import TrainState

# Objective keys are fold_in(step_key, OBJECTIVE_STREAM): per-example noise keys are
# fold_in(step_key, index) with index < transforms.BINARIZE_STREAM < OBJECTIVE_STREAM,
# so the streams never meet, and the noise stays what it was before objectives had keys.
OBJECTIVE_STREAM = 2**32 - 1

# Train steps per compiled call for steps_per_call=None, per backend, from
# `python -m tools.benchmark --steps_per_call=1,8` (tools/BENCHMARKS.md).
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


def split_step_key(step_key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(noise_key, objective_key) of one step (or of the eval)."""
  return step_key, jax.random.fold_in(step_key, OBJECTIVE_STREAM)


def train_step(state: TrainState, batch: dict, train_key: jax.Array, *, objective,
               corrupt=None, binarize: bool = False, coupled: bool = False,
               axis_name: str | None = None) -> tuple[TrainState, dict]:
  """One optimizer step of `objective` (an ae_jax.objectives function) on batch['image'] (x_BHWC,
  uint8 or float: the clean target).

  The step key is fold_in(train_key, step); the target is binarised (binarize)
  and the input is corrupt(target), each with keys fold_in(step key's stream,
  global example index), so every draw depends only on (seed, step, global
  example index). Under pmap pass axis_name: gradients and metrics are
  averaged over it, the objective's optimizer statistics summed. The
  statistics (summed over the global batch) go to the optimizer's update as
  keyword arguments. coupled: the objective's loss couples a batch's examples; it is
  handed axis_name to gather the global batch.
  """
  x_BHWC = transforms.to_float(batch["image"])
  local_b = x_BHWC.shape[0]
  first = 0 if axis_name is None else jax.lax.axis_index(axis_name) * local_b
  position_B = first + jnp.arange(local_b)
  step_key = jax.random.fold_in(train_key, state.step)
  noise_key, objective_key = split_step_key(step_key)
  if binarize:
    x_BHWC = transforms.binarize(step_key, x_BHWC, position_B)
  inputs_BHWC = x_BHWC if corrupt is None else transforms.corrupt_batch(corrupt, noise_key, x_BHWC,
                                                                         position_B)
  batch = {"image": x_BHWC, "input": inputs_BHWC, "position": position_B, "step": state.step}

  over_devices = {"axis_name": axis_name} if coupled else {}

  def loss_fn(params):
    loss_B, metrics_B, stats_B = objective(params, batch, objective_key, **over_devices)
    return jnp.mean(loss_B), (metrics_B, stats_B)

  (_, (metrics_B, stats_B)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  stats = jax.tree.map(lambda v: jnp.sum(v, axis=0), stats_B)
  step_metrics = jax.tree.map(jnp.mean, metrics_B)
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
    step_metrics = jax.lax.pmean(step_metrics, axis_name)
    stats = jax.lax.psum(stats, axis_name)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params, **stats)
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
  with keys from fold_in(eval_key's streams, i), the same draws at every eval. The
  objective also sees batch['mask'], for statistics over the batch (a coupled objective's).
  """
  x_BHWC = transforms.to_float(batch["image"])
  noise_key, objective_key = split_step_key(eval_key)
  if binarize:
    x_BHWC = transforms.binarize(eval_key, x_BHWC, batch["position"])

  def total(v_B):
    return jnp.sum(jnp.where(batch["mask"], v_B, 0.0))

  def run(inputs_BHWC):
    loss_B, m, _ = objective(params, {"image": x_BHWC, "input": inputs_BHWC, "position": batch["position"],
                                      "mask": batch["mask"]}, objective_key)
    return {"loss": total(loss_B), **{"recon_mse" if k == "mse" else k: total(v) for k, v in m.items()
                                      if k != "loss"}}

  if corrupt is None:
    return run(x_BHWC)
  noisy_BHWC = transforms.corrupt_batch(corrupt, noise_key, x_BHWC, batch["position"])
  return {**run(noisy_BHWC), "recon_from_clean_mse": run(x_BHWC)["recon_mse"],
          "corruption_mse": total(jax.vmap(losses.mse)(noisy_BHWC, x_BHWC))}


def evaluate(eval_fn, params, split, eval_key: jax.Array, batch_size: int) -> dict:
  """Dataset means of eval_fn's sums over a split (read in padded, masked batches), with PSNRs."""
  params = jax.device_put(params)  # once, not with every batch
  pending = []
  for start, x, valid in sampler.padded_batches(split, batch_size):
    index = start + np.arange(len(x))
    pending.append(eval_fn(params, {"image": x, "mask": index < start + valid, "position": index},
                           eval_key))
  sums = {}
  for batch_sums in jax.device_get(pending):  # one sync after all batches are dispatched
    for k, v in batch_sums.items():
      sums[k] = sums.get(k, 0.0) + float(v)
  out = {k: v / len(split) for k, v in sums.items()}
  out.update({f"{k[:-len('_mse')]}_psnr": float(losses.psnr(v)) for k, v in out.items()
              if k.endswith("_mse")})
  out["num_examples"] = len(split)
  return out


class Steps(NamedTuple):
  """A config's steps, bound: jit `train` (or hand it to a placement) and `eval` at the call site."""

  train: Callable  # (state, batch, train_key, *, axis_name=None) -> (state, metrics)
  eval: Callable  # (params, batch, eval_key) -> metric sums
  corrupt: Callable | None  # the per-example corruption, or None
  log_keys: tuple[str, ...]  # the metrics the progress line shows after `loss`


def build_model(config: ml_collections.ConfigDict, image_shape) -> models.Autoencoder:
  """The model config.model names, with the latent head config.objective needs."""
  return models.build(config.model, image_shape, objectives.head(config))


def bind_steps(config: ml_collections.ConfigDict, model: models.Autoencoder) -> Steps:
  """train_step and eval_step bound to config's objective, corruption and binarisation."""
  kwargs = dict(objective=objectives.bind(config, model.apply),
                corrupt=transforms.corruption_fn(config.noise),
                binarize=config.data.binarize == "dynamic")
  record = objectives.get(config.objective)
  return Steps(functools.partial(train_step, coupled=record.coupled, **kwargs),
               functools.partial(eval_step, **kwargs), kwargs["corrupt"], record.log_keys)
