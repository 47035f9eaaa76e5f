"""Input corruptions for denoising autoencoders: pure functions of (key, images)."""

import functools

import jax
import jax.numpy as jnp
import ml_collections

KINDS = ("none", "gaussian", "masking", "salt_and_pepper")


def gaussian(key: jax.Array, x: jax.Array, *, mean: float = 0.5, std: float = 0.5,
             clip: bool = True) -> jax.Array:
  """x + N(mean, std**2), clipped to [0, 1] (the reference DAE: mean 0.5, std 0.5)."""
  y = x + mean + std * jax.random.normal(key, x.shape, x.dtype)
  return jnp.clip(y, 0.0, 1.0) if clip else y


def _chosen(key: jax.Array, shape, nu) -> jax.Array:
  """Boolean mask with exactly round(nu * size) True entries at random positions.

  nu may be traced (one compilation for every level): the entries are the
  first round(nu * size) of a random permutation.
  """
  n = 1
  for d in shape:
    n *= d
  order = jax.random.permutation(key, n)
  return jnp.zeros((n,), bool).at[order].set(jnp.arange(n) < jnp.round(nu * n)).reshape(shape)


def masking(key: jax.Array, x: jax.Array, *, nu: float) -> jax.Array:
  """Sets a fraction nu of the entries of x (chosen at random) to 0 (Vincent et al. 2010)."""
  return jnp.where(_chosen(key, x.shape, nu), jnp.zeros_like(x), x)


def salt_and_pepper(key: jax.Array, x: jax.Array, *, nu: float) -> jax.Array:
  """Sets a fraction nu of the entries of x to 0 or 1, each with probability 1/2."""
  pick_key, coin_key = jax.random.split(key)
  salt = jax.random.bernoulli(coin_key, 0.5, x.shape).astype(x.dtype)
  return jnp.where(_chosen(pick_key, x.shape, nu), salt, x)


def corruption_fn(cfg: ml_collections.ConfigDict):
  """The per-example corruption `(key, x_HWC) -> x_HWC` that `config.noise` names, or None."""
  if cfg.kind == "none":
    return None
  if cfg.kind == "gaussian":
    return functools.partial(gaussian, mean=cfg.mean, std=cfg.std, clip=cfg.clip)
  if cfg.kind == "masking":
    return functools.partial(masking, nu=cfg.nu)
  if cfg.kind == "salt_and_pepper":
    return functools.partial(salt_and_pepper, nu=cfg.nu)
  raise ValueError(f"noise.kind={cfg.kind!r}: expected one of {KINDS}")


def corrupt_batch(fn, key: jax.Array, x_BHWC: jax.Array, index_B: jax.Array) -> jax.Array:
  """Corrupts example b with key fold_in(key, index_B[b]), its global index.

  Per-example keys make the noise an example gets independent of how the batch
  is split across devices: shard d passes index_B = d * local_batch + arange(local_batch).
  """
  keys_B = jax.vmap(jax.random.fold_in, (None, 0))(key, index_B)
  return jax.vmap(fn)(keys_B, x_BHWC)
