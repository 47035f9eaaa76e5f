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
# What the encoder emits: `dense` z_BD; `gaussian` the mean and log-variance of
# q(z|x) (VAE, IWAE); `grid` a spatial grid z_BhwD of vectors to quantise (VQ-VAE).
LATENTS = ("dense", "gaussian", "grid")
LATENT_OF_OBJECTIVE = {"vae": "gaussian", "iwae": "gaussian", "vqvae": "grid"}  # else dense


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
  """Stride-2 conv stack, then the latent head: x_BHWC -> z_BD (dense), [mean_BD, logvar_BD]
  concatenated to [B, 2D] (gaussian), or a 1x1 conv to z_BhwD (grid)."""

  filters: Sequence[int] = (32, 64)
  kernel_size: int = 3
  latent_dim: int = 16
  conv_impl: str = "auto"  # layers.IMPLS or auto: same params, different speed
  dtype: Any = None  # compute dtype (e.g. bfloat16); params stay float32
  latent: str = "dense"

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    x = x_BHWC
    for i, f in enumerate(self.filters):
      x = layers.conv(self.conv_impl, f, self.kernel_size, 2, f"conv{i}", self.dtype)(x)
      x = nn.relu(x)
    if self.latent == "grid":
      return nn.Conv(self.latent_dim, (1, 1), dtype=self.dtype, name="latent")(x).astype(jnp.float32)
    x = x.reshape(x.shape[0], -1)
    width = 2 * self.latent_dim if self.latent == "gaussian" else self.latent_dim
    return nn.Dense(width, dtype=self.dtype, name="latent")(x).astype(jnp.float32)


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
  latent: str = "dense"

  def setup(self):
    check_image_shape(self.image_shape, len(self.filters))
    if self.output not in OUTPUTS:
      raise ValueError(f"output={self.output!r}: expected one of {OUTPUTS}")
    h, w, _ = self.image_shape
    factor = 2 ** len(self.filters)
    self._grid = (h // factor, w // factor, self.filters[-1])
    if self.latent == "grid":  # z_BhwD already has the grid's shape: a 1x1 conv to its channels
      self.project = nn.Conv(self._grid[2], (1, 1), dtype=self.dtype)
    else:
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
    x = self.project(z_BD).reshape(z_BD.shape[0], *self._grid)  # z_BD or, for a grid, z_BhwD
    for deconv in self.deconvs:
      x = nn.relu(deconv(x))
    return self.to_pixels(x.astype(jnp.float32))  # logits, losses and sigmoid in float32

  def __call__(self, z_BD: jax.Array) -> jax.Array:
    logits_BHWC = self.logits(z_BD)
    return jax.nn.sigmoid(logits_BHWC) if self.output == "probabilities" else logits_BHWC


class Autoencoder(nn.Module):
  """Encoder + Decoder. Params are {'encoder': ..., 'decoder': ...}, each loadable on its own,
  plus 'codebook' [num_codes, latent_dim] for a grid latent and 'log_scale' for a learned
  Gaussian likelihood scale.

  `encode` gives the representation (z_BD; the posterior mean for a gaussian
  latent; the unquantised grid z_BhwD), `decode` maps it back (quantising a
  grid first), so `decode(encode(x))` is the deterministic reconstruction of
  every member.

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
  latent: str = "dense"  # LATENTS
  num_codes: int = 512  # grid latent: codebook size K
  learned_scale: bool = False  # a learned log-scale for a Gaussian likelihood

  def setup(self):
    check_image_shape(self.image_shape, len(self.filters), self.pad)
    if self.latent not in LATENTS:
      raise ValueError(f"latent={self.latent!r}: expected one of {LATENTS}")
    self.encoder = Encoder(self.filters, self.kernel_size, self.latent_dim, self.conv_impl, self.dtype,
                           self.latent)
    self.decoder = Decoder(padded_shape(self.image_shape, len(self.filters)), self.filters,
                           self.kernel_size, self.output, self.conv_impl, self.dtype, self.latent)
    if self.latent == "grid":  # Sonnet's VQ-VAE initialiser
      self.codebook = self.param("codebook", nn.initializers.variance_scaling(1.0, "fan_in", "uniform"),
                                 (self.num_codes, self.latent_dim))
    if self.learned_scale:
      self.log_scale = self.param("log_scale", nn.initializers.zeros, ())

  def _margins(self) -> tuple[tuple[int, int], tuple[int, int]]:
    (h, w, _), (ph, pw, _) = self.image_shape, padded_shape(self.image_shape, len(self.filters))
    return ((ph - h) // 2, ph - h - (ph - h) // 2), ((pw - w) // 2, pw - w - (pw - w) // 2)

  def _crop(self, y_BHWC: jax.Array) -> jax.Array:
    (top, _), (left, _) = self._margins()
    return y_BHWC[:, top:top + self.image_shape[0], left:left + self.image_shape[1]]

  def encoder_output(self, x_BHWC: jax.Array) -> jax.Array:
    """What the encoder emits: z_BD, [mean_BD, logvar_BD] concatenated, or z_BhwD."""
    (top, bottom), (left, right) = self._margins()
    if top or bottom or left or right:
      x_BHWC = jnp.pad(x_BHWC, ((0, 0), (top, bottom), (left, right), (0, 0)))
    return self.encoder(x_BHWC)

  def posterior(self, x_BHWC: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean_BD, logvar_BD) of q(z|x) for a gaussian latent."""
    mean_BD, logvar_BD = jnp.split(self.encoder_output(x_BHWC), 2, axis=-1)
    return mean_BD, logvar_BD

  def encode(self, x_BHWC: jax.Array) -> jax.Array:
    """The representation: z_BD, the posterior mean, or the unquantised grid z_BhwD."""
    out = self.encoder_output(x_BHWC)
    return jnp.split(out, 2, axis=-1)[0] if self.latent == "gaussian" else out

  def quantize(self, z_BhwD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(z_q_BhwD, codes_Bhw): each vector replaced by its nearest code (squared L2)."""
    distances = (jnp.sum(z_BhwD**2, -1, keepdims=True) - 2 * z_BhwD @ self.codebook.T
                 + jnp.sum(self.codebook**2, -1))
    codes_Bhw = jnp.argmin(distances, axis=-1)
    return self.codebook[codes_Bhw], codes_Bhw

  def latent_logits(self, z) -> jax.Array:
    """Decoder logits of a latent as given (a grid is not quantised: the VQ step passes its
    straight-through z_q)."""
    return self._crop(self.decoder.logits(z))

  def decode_logits(self, z) -> jax.Array:
    return self.latent_logits(self.quantize(z)[0] if self.latent == "grid" else z)

  def decode(self, z) -> jax.Array:
    logits = self.decode_logits(z)
    return jax.nn.sigmoid(logits) if self.output == "probabilities" else logits

  def logits(self, x_BHWC: jax.Array) -> jax.Array:
    return self.decode_logits(self.encode(x_BHWC))

  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    return self.decode(self.encode(x_BHWC))

  def latent_shape(self) -> tuple[int, ...]:
    """The shape of one example's representation (encode's output without B)."""
    if self.latent != "grid":
      return (self.latent_dim,)
    h, w, _ = padded_shape(self.image_shape, len(self.filters))
    return (h // 2 ** len(self.filters), w // 2 ** len(self.filters), self.latent_dim)


def from_config(config: ml_collections.ConfigDict, image_shape: Sequence[int]) -> Autoencoder:
  """Builds the Autoencoder from the run config (`model.*`; the objective picks the latent)."""
  cfg = config.model
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
      latent=LATENT_OF_OBJECTIVE.get(config.objective, "dense"),
      num_codes=int(cfg.num_codes),
      learned_scale=config.objective in ("vae", "iwae") and config.vae.likelihood == "gaussian"
      and config.vae.scale is None,
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
