"""The Keras reference convolutional autoencoder (`model.name='reference'`, the default).

Encoder: `filters` stride-2 convs (32, 64) with ReLU, then the head (Dense 16);
decoder: the head (Dense to the 7x7x64 grid), mirrored stride-2 transposed
convs with ReLU, a stride-1 transposed conv to the image's channels. 178,001
params on MNIST (encoder 69,008, decoder 108,993), as Keras's model.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ae_jax import fields
from ae_jax.models import heads, layers
from ae_jax.models.autoencoder import Architecture, compute_dtype

FIELDS = (
    fields.Field("model.filters", (32, 64), fields.LEVELS, fields.NEVER,
                 "reference: channels of the stride-2 conv levels"),
    fields.Field("model.kernel_size", 3, fields.POSITIVE, fields.NEVER, "reference: conv kernel size"),
)


class Encoder(nn.Module):
  """Stride-2 conv stack, then the latent head: x_BHWC -> z_BD, [mean_BD, logvar_BD] or z_BhwD."""

  filters: Sequence[int] = (32, 64)
  kernel_size: int = 3
  latent_dim: int = 16
  conv_impl: str = "auto"  # layers.IMPLS or auto: same params, different speed
  dtype: Any = None  # compute dtype (e.g. bfloat16); params stay float32
  head: heads.Head = heads.Head()

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    x = x_BHWC
    for i, f in enumerate(self.filters):
      x = nn.relu(layers.conv(self.conv_impl, f, self.kernel_size, 2, f"conv{i}", self.dtype)(x))
    return heads.encoder_head(self.head, self.latent_dim, x, self.dtype)


class Decoder(nn.Module):
  """The head to the smallest grid, mirrored stride-2 transposed convs, a stride-1 output conv:
  latent -> logits_BHWC (the sigmoid, if any, is the Autoencoder's)."""

  image_shape: Sequence[int] = (28, 28, 1)
  filters: Sequence[int] = (32, 64)
  kernel_size: int = 3
  conv_impl: str = "auto"
  dtype: Any = None
  head: heads.Head = heads.Head()

  @nn.compact
  def __call__(self, z) -> jax.Array:
    h, w, c = self.image_shape
    factor = 2 ** len(self.filters)
    x = heads.decoder_head(self.head, z, (h // factor, w // factor, self.filters[-1]), self.dtype)
    for i, f in enumerate(reversed(self.filters)):
      x = nn.relu(layers.conv_transpose(self.conv_impl, f, self.kernel_size, 2, f"deconv{i}", self.dtype)(x))
    # float32 even under a bfloat16 dtype: the 1-channel output conv is ~3% of the
    # FLOPs, and bfloat16 logits cost test MSE (measured in tools/BENCHMARKS.md).
    to_pixels = layers.conv_transpose(self.conv_impl, c, self.kernel_size, 1, "to_pixels")
    return to_pixels(x.astype(jnp.float32))


def build(cfg: ml_collections.ConfigDict, image_shape, head: heads.Head):
  filters, k = tuple(int(f) for f in cfg.filters), int(cfg.kernel_size)
  dtype = compute_dtype(cfg)
  return (Encoder(filters, k, int(cfg.latent_dim), cfg.conv_impl, dtype, head),
          Decoder(tuple(image_shape), filters, k, cfg.conv_impl, dtype, head))


ARCHITECTURE = Architecture(build, downsampling=lambda cfg: 2 ** len(cfg.filters), fields=FIELDS,
                            module=__name__)
