"""The record that makes a loss function an objective the whole library serves."""

from collections.abc import Callable
import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ae_jax.fields import Field
from ae_jax.models import Head


def dense_head(config: ml_collections.ConfigDict) -> Head:
  del config
  return Head("dense")


@dataclasses.dataclass(frozen=True)
class Objective:
  """An objective by name (`config.objective`): its pure function and what it needs from the rest.

  bind(config, apply_fn) -> fn(params, batch, key) -> (loss_B, metrics_B, stats_B):
    per-example loss, per-example metrics (the step averages both over the
    global batch; the eval sums them over the valid examples) and per-example
    optimizer statistics (summed over the global batch and passed to the
    optimizer's update as keyword arguments; {} for most objectives). batch
    holds 'input' (what the encoder sees: corrupted, for denoising), 'image'
    (the clean target), 'position' (each example's index in the global batch)
    and, in training, 'step'. Derive per-example keys as
    fold_in(key, batch['position'][b]), so draws depend only on (seed, step,
    global example index).
  head(config) -> models.Head: the latent the model must emit.
  fields: its config fields (declared here once; ae_jax.config gathers them).
  transform(config) -> an optax transform that consumes the statistics, or None;
    it runs after the optimizer, before the params EMA (the VQ-VAE's EMA codebook).
  log_keys: the metrics its progress line shows after `loss`.
  check(config): raises ValueError for field combinations it cannot run.
  log_weights(config, apply_fn) -> fn(params, x_BHWC, position_B, key, k) -> [B, k]
    log p(x, z_j) - log q(z_j|x) for k samples z_j ~ q(z|x): objectives of a
    latent-variable model give it, and the final eval estimates -log p(x) with it.
  code_length(config): whether that likelihood is of discrete data, so that -log p(x)
    is a code length and the final eval also gives it in bits/dim.
  params(config, key, latent_dim) -> {name: params}: a second set of parameters of its own (FactorVAE's
    discriminator), kept beside the model's in the train state's params under those names,
    checkpointed and resumed with them, and trained by `optimizer`.
  optimizer(config) -> the optax transform of those params (None: the run's optimizer).
  coupled: its loss couples the examples of a batch (statistics over the batch: β-TCVAE,
    DIP-VAE, FactorVAE). Under pmap the step then calls fn(..., axis_name=the device axis),
    and fn gathers what it needs over the global batch (`global_batch`), so that the run is
    the same on any number of devices; jit and mesh see the global batch whole.
  """

  bind: Callable[[ml_collections.ConfigDict, Callable], Callable]
  head: Callable[[ml_collections.ConfigDict], Head] = dense_head
  fields: tuple[Field, ...] = ()
  transform: Callable[[ml_collections.ConfigDict], optax.GradientTransformationExtraArgs | None] | None = None
  log_keys: tuple[str, ...] = ("mse",)
  check: Callable[[ml_collections.ConfigDict], None] | None = None
  log_weights: Callable[[ml_collections.ConfigDict, Callable], Callable] | None = None
  code_length: Callable[[ml_collections.ConfigDict], bool] | None = None
  params: Callable[[ml_collections.ConfigDict, jax.Array, int], dict] | None = None
  optimizer: Callable[[ml_collections.ConfigDict], optax.GradientTransformation] | None = None
  coupled: bool = False
  module: str = ""


def per_example_keys(key: jax.Array, position_B: jax.Array) -> jax.Array:
  """fold_in(key, position_B[b]) for each example: its draws depend on its global index alone."""
  return jax.vmap(jax.random.fold_in, (None, 0))(key, position_B)


def global_batch(tree_B, axis_name: str | None) -> tuple:
  """(tree_B's arrays over the global batch, the offset of this device's examples in them): under pmap
  gathered from every device in one collective (differentiably: the gradient flows back to the
  examples' own devices); else tree_B itself, offset 0."""
  if axis_name is None:
    return tree_B, 0
  b = jax.tree.leaves(tree_B)[0].shape[0]
  return jax.lax.all_gather(tree_B, axis_name, tiled=True), jax.lax.axis_index(axis_name) * b


def batch_weights(batch: dict, b: int) -> jax.Array:
  """1 for each of the b examples that count in a batch's statistics (the eval's padding does not)."""
  return jnp.ones((b,), jnp.float32) if "mask" not in batch else batch["mask"].astype(jnp.float32)
