"""Your own architecture, registered from outside ae_jax: a fully connected autoencoder (`model.name=mlp`).

Hidden layers of `model.mlp_widths` with ReLU on each side of the latent head;
it serves every objective because it calls the heads (`encoder_head` last,
`decoder_head` first). Use it with `--plugins=docs/examples/mlp.py --config.model.name=mlp`.
"""

from collections.abc import Sequence

import flax.linen as nn
import numpy as np

from ae_jax import fields, models


class Encoder(nn.Module):
  widths: Sequence[int]
  latent_dim: int
  head: models.Head

  @nn.compact
  def __call__(self, x_BHWC):
    h = x_BHWC.reshape(x_BHWC.shape[0], -1)
    for i, w in enumerate(self.widths):
      h = nn.relu(nn.Dense(w, name=f"dense{i}")(h))
    return models.heads.encoder_head(self.head, self.latent_dim, h[:, None, None, :])


class Decoder(nn.Module):
  widths: Sequence[int]
  image_shape: tuple[int, int, int]
  head: models.Head

  @nn.compact
  def __call__(self, z):
    h = nn.relu(models.heads.decoder_head(self.head, z, (1, 1, self.widths[-1]))).reshape(z.shape[0], -1)
    for i, w in enumerate(reversed(self.widths[:-1])):
      h = nn.relu(nn.Dense(w, name=f"dense{i}")(h))
    logits = nn.Dense(int(np.prod(self.image_shape)), name="to_pixels")(h)
    return logits.reshape(z.shape[0], *self.image_shape)


FIELDS = (
    fields.Field("model.mlp_widths", (256, 128), fields.LEVELS, fields.NEVER,
                 "mlp: hidden widths, input side first (mirrored in the decoder)"),
)

models.register("mlp", models.Architecture(
    build=lambda cfg, image_shape, head: (Encoder(tuple(cfg.mlp_widths), cfg.latent_dim, head),
                                          Decoder(tuple(cfg.mlp_widths), tuple(image_shape), head)),
    downsampling=lambda cfg: 1,  # any image size
    fields=FIELDS))
