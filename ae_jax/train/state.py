"""The train state: params, the optimizer (with its schedule, clipping, the objective's transform
and the params EMA) and the step; and the run's named keys."""

from typing import NamedTuple

from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ae_jax import config as config_lib
from ae_jax import models, objectives

TrainState = train_state.TrainState


def run_keys(seed: int) -> dict:
  """The run's named keys, split once from the root key: init, train, data (order), eval."""
  init, train_, data_, eval_ = jax.random.split(jax.random.key(seed), 4)
  return {"init": init, "train": train_, "data": data_, "eval": eval_}


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
  """cfg.optimizer with its learning rate (schedule), weight decay, gradient clipping, the objective's
  own transform (which consumes its statistics) and the params EMA."""
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
  objective = objectives.get(cfg.objective)
  own = objective.transform(cfg) if objective.transform is not None else None
  if own is not None:
    parts.append(own)
  if objective.params is not None:  # its own params (FactorVAE's discriminator), with their own optimizer
    names = set(jax.eval_shape(lambda k: objective.params(cfg, k, 1), jax.random.key(0)))
    model_tx = parts[0] if len(parts) == 1 else optax.chain(*parts)
    own_tx = objective.optimizer(cfg) if objective.optimizer is not None else model_tx
    parts = [optax.multi_transform(
        {"model": model_tx, "objective": own_tx},
        lambda params: {k: "objective" if k in names else "model" for k in params})]
  if cfg.ema_decay is not None:
    parts.append(track_ema(cfg.ema_decay))
  return parts[0] if len(parts) == 1 else optax.chain(*parts)


def eval_params(state: TrainState):
  """The params to evaluate: their EMA when the optimizer keeps one (ema_decay), else the params."""
  ema = optax.tree_utils.tree_get(state.opt_state, "ema", None)
  return state.params if ema is None else ema


def create_train_state(model: models.Autoencoder, cfg: ml_collections.ConfigDict,
                       key: jax.Array, total_steps: int | None = None) -> TrainState:
  """Params from `key` (the model's, and the objective's own from fold_in(key, 1)), step 0, and
  make_optimizer(cfg, total_steps) (needed by lr schedules)."""
  params = models.init_params(model, key)
  own = objectives.get(cfg.objective).params
  if own is not None:
    extra = own(cfg, jax.random.fold_in(key, 1), model.latent_dim)
    clash = sorted(set(extra) & set(params))
    if clash:
      raise ValueError(f"objective={cfg.objective!r}: its params {clash[0]!r} clash with the model's; "
                       "rename them")
    params = {**params, **extra}
  state = TrainState.create(apply_fn=model.apply, params=params, tx=make_optimizer(cfg, total_steps))
  return state.replace(step=jnp.zeros((), jnp.int32))
