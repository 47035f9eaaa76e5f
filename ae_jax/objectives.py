"""What the train step minimises: one pure function per objective, chosen by `config.objective`.

An objective is `objective(params, batch, key) -> (loss_B, metrics_B)`: per-example
values, which the train step averages over the batch (and the devices) and the
eval step sums over the valid examples of a padded batch. `batch['input']` is
what the encoder sees (corrupted, for denoising: the step corrupts, so every
objective composes with every corruption), `batch['image']` the clean target,
`batch['position']` each example's index in the global batch. `key` is this
step's objective key: derive per-example keys as
`jax.random.fold_in(key, batch['position'][b])`, so draws depend only on
(seed, step, global example index), never on the device count.
"""

import functools

import jax
import ml_collections

from ae_jax import losses

NAMES = ("ae",)
# Objective keys are fold_in(step_key, OBJECTIVE_STREAM): per-example noise keys are
# fold_in(step_key, index) with index < 2**32 - 1, so the two streams never meet,
# and the noise stays what it was before objectives had keys of their own.
OBJECTIVE_STREAM = 2**32 - 1


def split_step_key(step_key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(noise_key, objective_key) of one step (or of the eval)."""
  return step_key, jax.random.fold_in(step_key, OBJECTIVE_STREAM)


def reconstruction(params, batch: dict, key: jax.Array, *, apply_fn, loss: str):
  """The autoencoder: decoder(encoder(input)) against the clean image.

  loss_B is per example the mean over pixels of `loss` (Keras's `mse` or
  `binary_crossentropy`, as in the reference), from the decoder's logits.
  """
  del key  # deterministic
  logits_BHWC = apply_fn({"params": params}, batch["input"], method="logits")
  x_BHWC = batch["image"]
  loss_B = jax.vmap(functools.partial(losses.reconstruction_loss, loss))(logits_BHWC, x_BHWC)
  mse_B = jax.vmap(losses.mse)(jax.nn.sigmoid(logits_BHWC), x_BHWC)
  return loss_B, {"loss": loss_B, "mse": mse_B}


def from_config(cfg: ml_collections.ConfigDict, apply_fn):
  """The objective `cfg.objective` names, bound to the model's apply_fn and its own fields."""
  if cfg.objective == "ae":
    return functools.partial(reconstruction, apply_fn=apply_fn, loss=cfg.loss)
  raise ValueError(f"objective={cfg.objective!r}: expected one of {NAMES}")
