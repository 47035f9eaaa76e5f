"""Convolutional encoder, decoder and autoencoder (the Keras reference model by default)."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ae_jax import layers

OUTPUTS = ("probabilities", "logits")
DTYPES = ("float32", "bfloat16")



def padded_shape(image_shape: Sequence[int], levels: int) -> tuple[int, int, int]:
  """(H, W, C) with H and W rounded up to multiples of 2**levels."""
  h, w, c = (int(d) for d in image_shape)
  factor = 2**levels
  return (-(-h // factor) * factor, -(-w // factor) * factor, c)


def check_image_shape(image_shape: Sequence[int], levels: int, pad: bool = False) -> None:
  """Raises ValueError unless H and W are divisible by 2**levels (or pad is on)."""
  if len(image_shape) != 3 or any(int(d) <= 0 for d in image_shape):
    raise ValueError(f"image_shape={tuple(image_shape)}: expected (H, W, C) with positive sizes")
  factor = 2**levels
  if not pad and tuple(padded_shape(image_shape, levels)) != tuple(int(d) for d in image_shape):
    raise ValueError(
        f"image_shape={tuple(image_shape)}: H and W must be divisible by 2**levels={factor} "
        f"for {levels} stride-2 levels; set model.pad=True to pad the input to "
        f"{padded_shape(image_shape, levels)} and crop the output back")


class Encoder(nn.Module):
  """Stride-2 conv stack, flatten, Dense latent: x_BHWC -> z_BD."""

  filters: Sequence[int] = (32, 64)
  kernel_size: int = 3
  latent_dim: int = 16
  conv_impl: str = "auto"  # layers.IMPLS or auto: same params, different speed
  dtype: Any = None  # compute dtype (e.g. bfloat16); params stay float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    x = x_BHWC
    for i, f in enumerate(self.filters):
      x = layers.conv(self.conv_impl, f, self.kernel_size, 2, f"conv{i}", self.dtype)(x)
      x = nn.relu(x)
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(self.latent_dim, dtype=self.dtype, name="latent")(x).astype(jnp.float32)


class Decoder(nn.Module):
  """Dense, reshape, mirrored stride-2 transposed convs, 1-stride output conv: z_BD -> x_BHWC.

  `__call__` returns probabilities (sigmoid, as the reference) or logits, per
  `output`; `logits` always returns the pre-activation, which is what losses use.
  """

  image_shape: Sequence[int] = (28, 28, 1)
  filters: Sequence[int] = (32, 64)
  kernel_size: int = 3
  output: str = "probabilities"
  conv_impl: str = "auto"
  dtype: Any = None

  def setup(self):
    check_image_shape(self.image_shape, len(self.filters))
    if self.output not in OUTPUTS:
      raise ValueError(f"output={self.output!r}: expected one of {OUTPUTS}")
    h, w, _ = self.image_shape
    factor = 2 ** len(self.filters)
    self._grid = (h // factor, w // factor, self.filters[-1])
    self.project = nn.Dense(self._grid[0] * self._grid[1] * self._grid[2], dtype=self.dtype)
    k = self.kernel_size
    self.deconvs = [
        layers.conv_transpose(self.conv_impl, f, k, 2, f"deconv{i}", self.dtype)
        for i, f in enumerate(reversed(self.filters))
    ]
    # float32 even under a bfloat16 dtype: the 1-channel output conv is ~3% of the
    # FLOPs, and bfloat16 logits cost test MSE (measured in experiments/BENCHMARKS.md).
    self.to_pixels = layers.conv_transpose(self.conv_impl, self.image_shape[2], k, 1)

  def logits(self, z_BD: jax.Array) -> jax.Array:
    x = self.project(z_BD).reshape(z_BD.shape[0], *self._grid)
    for deconv in self.deconvs:
      x = nn.relu(deconv(x))
    return self.to_pixels(x.astype(jnp.float32))  # logits, losses and sigmoid in float32

  def __call__(self, z_BD: jax.Array) -> jax.Array:
    logits_BHWC = self.logits(z_BD)
    return jax.nn.sigmoid(logits_BHWC) if self.output == "probabilities" else logits_BHWC


class Autoencoder(nn.Module):
  """Encoder + Decoder. Params are {'encoder': ..., 'decoder': ...}, each loadable on its own.

  pad: images whose H or W 2**levels does not divide are zero-padded (evenly on
  both sides) to the next multiple, and the decoder's output is cropped back.
  """

  image_shape: Sequence[int] = (28, 28, 1)
  filters: Sequence[int] = (32, 64)
  kernel_size: int = 3
  latent_dim: int = 16
  output: str = "probabilities"
  conv_impl: str = "auto"
  dtype: Any = None
  pad: bool = False

  def setup(self):
    check_image_shape(self.image_shape, len(self.filters), self.pad)
    self.encoder = Encoder(self.filters, self.kernel_size, self.latent_dim, self.conv_impl, self.dtype)
    self.decoder = Decoder(padded_shape(self.image_shape, len(self.filters)), self.filters,
                           self.kernel_size, self.output, self.conv_impl, self.dtype)

  def _margins(self) -> tuple[tuple[int, int], tuple[int, int]]:
    (h, w, _), (ph, pw, _) = self.image_shape, padded_shape(self.image_shape, len(self.filters))
    return ((ph - h) // 2, ph - h - (ph - h) // 2), ((pw - w) // 2, pw - w - (pw - w) // 2)

  def _crop(self, y_BHWC: jax.Array) -> jax.Array:
    (top, _), (left, _) = self._margins()
    return y_BHWC[:, top:top + self.image_shape[0], left:left + self.image_shape[1]]

  def encode(self, x_BHWC: jax.Array) -> jax.Array:
    (top, bottom), (left, right) = self._margins()
    if top or bottom or left or right:
      x_BHWC = jnp.pad(x_BHWC, ((0, 0), (top, bottom), (left, right), (0, 0)))
    return self.encoder(x_BHWC)

  def decode(self, z_BD: jax.Array) -> jax.Array:
    return self._crop(self.decoder(z_BD))

  def logits(self, x_BHWC: jax.Array) -> jax.Array:
    return self._crop(self.decoder.logits(self.encode(x_BHWC)))

  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    return self.decode(self.encode(x_BHWC))


def from_config(cfg: ml_collections.ConfigDict, image_shape: Sequence[int]) -> Autoencoder:
  """Builds the Autoencoder from `config.model` for images of `image_shape`."""
  check_image_shape(image_shape, len(cfg.filters), cfg.pad)
  return Autoencoder(
      image_shape=tuple(int(d) for d in image_shape),
      filters=tuple(int(f) for f in cfg.filters),
      kernel_size=int(cfg.kernel_size),
      latent_dim=int(cfg.latent_dim),
      output=cfg.output,
      conv_impl=cfg.conv_impl,
      dtype=None if cfg.dtype == "float32" else jnp.dtype(cfg.dtype),
      pad=cfg.pad,
  )


def init_params(model: Autoencoder, key: jax.Array) -> dict:
  """Initial params for one example of the model's image shape.

  Jitted: one compile instead of one per initializer op (1.8 s instead of 4.4 s
  on CPU), with bit-identical values.
  """
  x = jnp.zeros((1, *model.image_shape), jnp.float32)
  return jax.jit(lambda k: model.init(k, x)["params"])(key)


def count_params(tree) -> int:
  return int(sum(x.size for x in jax.tree.leaves(tree)))
