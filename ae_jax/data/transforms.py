"""What the step does to a batch before the objective sees it: uint8 to float, binarisation, corruption.

Pure functions of (key, images). The train step draws example b's binarisation
and corruption with keys fold_in(stream key, global index of b), so they depend
only on (seed, step, global example index), never on how the batch is split
across devices.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ae_jax import fields

KINDS = ("none", "gaussian", "masking", "salt_and_pepper")
BINARIZE = ("none", "dynamic")
# Binarisation keys are fold_in(step_key, BINARIZE_STREAM): corruption keys are
# fold_in(step_key, index) with index < 2**32 - 2, so the streams never meet.
BINARIZE_STREAM = 2**32 - 2

FIELDS = (
    fields.Field("noise.kind", "none", fields.one_of(*KINDS), fields.ALLOW, "input corruption (denoising)"),
    fields.Field("noise.mean", 0.5, fields.NUMBER, fields.ALLOW, "gaussian: mean of the added noise"),
    fields.Field("noise.std", 0.5, fields.NON_NEGATIVE_NUMBER, fields.ALLOW,
                 "gaussian: std of the added noise"),
    fields.Field("noise.clip", True, fields.BOOL, fields.ALLOW, "gaussian: clip the input to [0, 1]"),
    fields.Field("noise.nu", 0.3, fields.FRACTION, fields.ALLOW,
                 "masking, salt_and_pepper: fraction of pixels hit"),
    fields.Field("data.binarize", "none", fields.one_of(*BINARIZE), fields.ALLOW,
                 "`dynamic`: train on Bernoulli(x) drawn anew each step; evaluate one fixed draw of the "
                 "test set"),
)

# uint8 -> float32 by table: exactly numpy's x / 255. XLA turns a division by a constant
# into a multiplication by its reciprocal, which rounds 1 value in 4 differently.
_UINT8_TO_FLOAT = np.arange(256, dtype=np.float32) / np.float32(255)


def to_float(x_BHWC):
  """Images as float32 in [0, 1]: uint8 is divided by 255, floats pass (numpy in, numpy out)."""
  if isinstance(x_BHWC, np.ndarray):
    return _UINT8_TO_FLOAT[x_BHWC] if x_BHWC.dtype == np.uint8 else x_BHWC.astype(np.float32, copy=False)
  return jnp.asarray(_UINT8_TO_FLOAT)[x_BHWC] if x_BHWC.dtype == jnp.uint8 else x_BHWC.astype(jnp.float32)


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


def binarize(step_key: jax.Array, x_BHWC: jax.Array, index_B: jax.Array) -> jax.Array:
  """Bernoulli(x) per pixel, example b with fold_in(fold_in(step_key, BINARIZE_STREAM), index_B[b]).

  Dynamic binarisation in training (a new draw every step); with the eval key,
  the one fixed binarisation of the test set.
  """
  keys_B = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.fold_in(step_key, BINARIZE_STREAM), index_B)
  draw = jax.vmap(lambda k, x: jax.random.bernoulli(k, x).astype(x.dtype))
  return draw(keys_B, x_BHWC)
