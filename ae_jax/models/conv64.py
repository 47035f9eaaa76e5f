"""The 64x64 convolutional net of the beta-VAE paper, as disentanglement_lib has it (`model.name='conv64'`).

disentanglement_lib `methods/shared/architectures.py`, conv_encoder and
deconv_decoder (Higgins et al. 2017, Table 1 row 3), the net of Locatello et
al. 2019's study; SAME padding, ReLU:

  encoder: conv 4x4/2 32, conv 4x4/2 32, conv 2x2/2 64, conv 2x2/2 64, flatten,
           Dense 256, then the head (Dense 2 x latent_dim: means and log-variances)
  decoder: Dense 256 (`project`), Dense 1024, reshape to 4x4x64, transposed convs
           4x4/2 64, 32, 32 and C (no activation: logits)

At 64x64x1 with latent_dim 10 and a Gaussian head: 690,517 params (encoder
309,204, decoder 381,313). Other sizes divisible by 16 keep the layer list (the
grid after the convs is H/16 x W/16). A quantised grid latent is not part of
this net: use model.name='resnet' or 'reference' for the VQ-VAE.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ae_jax.models import heads, layers
from ae_jax.models.autoencoder import Architecture, compute_dtype

ENCODER = ((32, 4), (32, 4), (64, 2), (64, 2))  # (channels, kernel) of the stride-2 convs
DECODER = ((64, 4), (32, 4), (32, 4))  # then a transposed conv to the image's channels
HIDDEN = 256


class Encoder(nn.Module):
  latent_dim: int = 10
  conv_impl: str = "auto"
  dtype: Any = None
  head: heads.Head = heads.Head()

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    x = x_BHWC
    for i, (c, k) in enumerate(ENCODER):
      x = nn.relu(layers.conv(self.conv_impl, c, k, 2, f"e{i + 1}", self.dtype)(x))
    x = nn.relu(nn.Dense(HIDDEN, dtype=self.dtype, name="e5")(x.reshape(x.shape[0], -1)))
    return heads.encoder_head(self.head, self.latent_dim, x, self.dtype)


class Decoder(nn.Module):
  image_shape: tuple[int, int, int] = (64, 64, 1)
  conv_impl: str = "auto"
  dtype: Any = None

  @nn.compact
  def __call__(self, z_BD: jax.Array) -> jax.Array:
    h, w, c = self.image_shape
    grid = (h // 16, w // 16, ENCODER[-1][0])
    x = nn.relu(nn.Dense(HIDDEN, dtype=self.dtype, name="project")(z_BD))
    x = nn.relu(nn.Dense(grid[0] * grid[1] * grid[2], dtype=self.dtype, name="d2")(x))
    x = x.reshape(x.shape[0], *grid)
    for i, (f, k) in enumerate(DECODER):
      x = nn.relu(layers.conv_transpose(self.conv_impl, f, k, 2, f"d{i + 3}", self.dtype)(x))
    # float32 logits under a bfloat16 dtype, as the reference's output conv.
    return layers.conv_transpose(self.conv_impl, c, 4, 2, "d6")(x.astype(jnp.float32))


def check(cfg: ml_collections.ConfigDict, head: heads.Head) -> None:
  del cfg
  if head.latent == "grid":
    raise ValueError("model.name='conv64': the beta-VAE net has a vector latent, not the quantised grid this "
                     "objective needs; use model.name='resnet' or 'reference'")


def build(cfg: ml_collections.ConfigDict, image_shape, head: heads.Head):
  check(cfg, head)
  dtype = compute_dtype(cfg)
  return (Encoder(int(cfg.latent_dim), cfg.conv_impl, dtype, head),
          Decoder(tuple(int(d) for d in image_shape), cfg.conv_impl, dtype))


ARCHITECTURE = Architecture(build, downsampling=lambda cfg: 16, module=__name__, check=check)
