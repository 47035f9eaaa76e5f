"""The autoencoder every architecture becomes: its encoder and decoder, the latent head's parameters,
and the methods objectives, evaluation and probes call."""

from collections.abc import Callable, Sequence
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ae_jax.fields import Field
from ae_jax.models.heads import Head

OUTPUTS = ("probabilities", "logits")


@dataclasses.dataclass(frozen=True)
class Architecture:
  """An architecture by name (`model.name`), built from `config.model` alone.

  build(config.model, padded_shape, head) -> (encoder, decoder): flax modules,
  the encoder x_BHWC -> its head's output (ending with heads.encoder_head), the
  decoder latent -> logits_BHWC (starting with heads.decoder_head), both at
  padded_shape. downsampling(config.model): the factor by which the encoder
  shrinks H and W (images must divide by it, or model.pad rounds them up).
  latent_size(config.model, padded_shape): a vector latent's size when the
  encoder flattens a grid into it (None: model.latent_dim). check(config.model,
  head): one-line ValueErrors for what build would refuse, before any work.
  """

  build: Callable[[ml_collections.ConfigDict, tuple[int, int, int], Head], tuple[nn.Module, nn.Module]]
  downsampling: Callable[[ml_collections.ConfigDict], int]
  fields: tuple[Field, ...] = ()
  module: str = ""
  # (config.model, padded_shape) -> the size of a vector latent when it is not model.latent_dim
  # (a flattened grid), or None.
  latent_size: Callable[[ml_collections.ConfigDict, tuple[int, int, int]], int | None] | None = None
  # (config.model, head) -> raises ValueError for fields (or a head) it cannot build; run by
  # config.validate, before any data is read.
  check: Callable[[ml_collections.ConfigDict, Head], None] | None = None


def compute_dtype(cfg: ml_collections.ConfigDict):
  """model.dtype as a flax compute dtype (None for float32: the layers' own default)."""
  return None if cfg.dtype == "float32" else jnp.dtype(cfg.dtype)


def padded_shape(image_shape: Sequence[int], factor: int) -> tuple[int, int, int]:
  """(H, W, C) with H and W rounded up to multiples of factor."""
  h, w, c = (int(d) for d in image_shape)
  return (-(-h // factor) * factor, -(-w // factor) * factor, c)


class Autoencoder(nn.Module):
  """Encoder + Decoder. Params are {'encoder': ..., 'decoder': ...}, each loadable on its own,
  plus 'codebook' [num_codes, latent_dim] for a grid latent and 'log_scale' (a scalar, or [C]) for
  a likelihood's scale param.

  `encode` gives the representation (z_BD; the posterior mean for a gaussian
  latent; the unquantised grid z_BhwD), `decode` maps it back (quantising a
  grid first), so `decode(encode(x))` is the deterministic reconstruction of
  every member. Images that the architecture's downsampling does not divide
  are zero-padded (evenly on both sides) to padded_shape, and outputs cropped back.
  """

  encoder: nn.Module
  decoder: nn.Module
  image_shape: tuple[int, int, int]
  padded_shape: tuple[int, int, int]
  downsampling: int
  head: Head = Head()
  latent_dim: int = 16
  num_codes: int = 512  # grid latent: codebook size K
  output: str = "probabilities"

  def setup(self):
    if self.output not in OUTPUTS:
      raise ValueError(f"output={self.output!r}: expected one of {OUTPUTS}")
    if self.head.latent == "grid":  # Sonnet's VQ-VAE initialiser
      self.codebook = self.param("codebook", nn.initializers.variance_scaling(1.0, "fan_in", "uniform"),
                                 (self.num_codes, self.latent_dim))
    if self.head.learned_scale:
      shape = (self.image_shape[-1],) if self.head.per_channel_scale else ()
      self.log_scale = self.param("log_scale", nn.initializers.zeros, shape)

  @property
  def latent(self) -> str:
    return self.head.latent

  def _margins(self) -> tuple[tuple[int, int], tuple[int, int]]:
    (h, w, _), (ph, pw, _) = self.image_shape, self.padded_shape
    return ((ph - h) // 2, ph - h - (ph - h) // 2), ((pw - w) // 2, pw - w - (pw - w) // 2)

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
    (top, _), (left, _) = self._margins()
    y_BHWC = self.decoder(z)
    return y_BHWC[:, top:top + self.image_shape[0], left:left + self.image_shape[1]]

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
    h, w, _ = self.padded_shape
    return (h // self.downsampling, w // self.downsampling, self.latent_dim)
