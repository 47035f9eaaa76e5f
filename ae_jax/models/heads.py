"""Latent heads: what sits between an architecture's conv stacks and the latent the objective needs.

An objective asks for a `Head`; every architecture ends its encoder with
`encoder_head` and starts its decoder with `decoder_head`, so each architecture
serves every objective. The layers are named `latent` and `project` in the
calling module's scope.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

# `dense`: a vector z_BD; `gaussian`: the mean and log-variance of q(z|x) (VAE, IWAE),
# concatenated to [B, 2D]; `grid`: a spatial grid z_BhwD of vectors to quantise (VQ-VAE).
LATENTS = ("dense", "gaussian", "grid")


@dataclasses.dataclass(frozen=True)
class Head:
  """The latent an objective needs, and whether its likelihood has a scale param (one, or one per
  channel)."""

  latent: str = "dense"
  learned_scale: bool = False
  per_channel_scale: bool = False

  def __post_init__(self):
    if self.latent not in LATENTS:
      raise ValueError(f"latent={self.latent!r}: expected one of {LATENTS}")


def encoder_head(head: Head, latent_dim: int, features_BhwC: jax.Array, dtype=None) -> jax.Array:
  """The encoder's last layer, `latent`: a Dense on the flattened features (dense: D outputs,
  gaussian: 2D), or a 1x1 conv to D channels (grid). Float32 out."""
  if head.latent == "grid":
    return nn.Conv(latent_dim, (1, 1), dtype=dtype, name="latent")(features_BhwC).astype(jnp.float32)
  width = 2 * latent_dim if head.latent == "gaussian" else latent_dim
  flat = features_BhwC.reshape(features_BhwC.shape[0], -1)
  return nn.Dense(width, dtype=dtype, name="latent")(flat).astype(jnp.float32)


def decoder_head(head: Head, z, grid_hwC: tuple[int, int, int], dtype=None) -> jax.Array:
  """The decoder's first layer, `project`: the latent to the feature grid [B, h, w, C] the decoder's
  stack starts from (a Dense and a reshape; for a grid latent, a 1x1 conv)."""
  if head.latent == "grid":
    return nn.Conv(grid_hwC[2], (1, 1), dtype=dtype, name="project")(z)
  h, w, c = grid_hwC
  return nn.Dense(h * w * c, dtype=dtype, name="project")(z).reshape(z.shape[0], h, w, c)
