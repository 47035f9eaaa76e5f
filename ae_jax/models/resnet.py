"""The residual encoder/decoder of latent diffusion's autoencoders (`model.name='resnet'`).

After CompVis latent-diffusion `ldm/modules/diffusionmodules/model.py` (Encoder,
Decoder) and its Flax twin, big_vision `models/proj/givt/cnn.py`:

- ResnetBlock: GroupNorm(32, eps 1e-6), swish, 3x3 conv, GroupNorm, swish,
  3x3 conv; a 1x1 conv on the shortcut when the width changes; x + h.
- AttnBlock: GroupNorm, 1x1 q, k, v; softmax(q k^T / sqrt(C)) over the H*W
  positions; 1x1 proj_out; x + h.
- Encoder: conv_in 3x3 to `channels`; per level i, num_res_blocks blocks of
  channels * channel_mult[i] (each followed by an AttnBlock where H is in
  attention_resolutions), then a 3x3 stride-2 conv (the anchor's Downsample:
  zero pad bottom/right by 1, which is XLA's SAME here) except after the last
  level; the middle: block, attention, block; GroupNorm, swish; the latent head.
- Decoder: the head to the lowest grid at the last level's width; the middle;
  per level from the last, num_res_blocks + 1 blocks (and attention), then
  nearest-neighbour x2 and a 3x3 conv except at level 0; GroupNorm, swish; a
  3x3 conv to the image's channels (float32, as the logits).

Downsampling f = 2^(len(channel_mult) - 1). The latent: with model.latent_grid,
one latent_dim vector per position of the lowest grid (the anchor's z_channels;
for the VAE family mean and log-variance per position, `double_z`), flattened to
one vector of (H/f)(W/f)latent_dim for the objectives; otherwise a Dense on the
flattened features (a vector latent, for probes). A VQ head always quantises
the grid. Differences from the anchor, on purpose: Flax's default initialisers
(as big_vision); no dropout (its masks would need per-example keys to keep the
step's draws independent of the device count) or timestep embedding; a 1x1 conv
to and from the latent where the anchor has its 3x3 conv_out + 1x1 quant_conv
and 1x1 post_quant_conv + 3x3 conv_in.
Normalisation and softmax run in float32 under a bfloat16 model.dtype.
"""

from collections.abc import Sequence
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ae_jax import fields
from ae_jax.models import heads, layers
from ae_jax.models.autoencoder import Architecture, compute_dtype

NORMS = ("group", "none")
SIZES = fields.Check(lambda v: isinstance(v, tuple | list) and all(fields.POSITIVE.ok(f) for f in v),
                     "a tuple of positive integers (may be empty)")

FIELDS = (
    fields.Field("model.channels", 64, fields.POSITIVE, fields.NEVER,
                 "resnet: the base width (level i has channels * channel_mult[i])"),
    fields.Field("model.channel_mult", (1, 2, 4), fields.LEVELS, fields.NEVER,
                 "resnet: width multiplier per level; each level after the first halves H and W"),
    fields.Field("model.num_res_blocks", 2, fields.POSITIVE, fields.NEVER,
                 "resnet: residual blocks per encoder level (the decoder has one more)"),
    fields.Field("model.attention_resolutions", (), SIZES, fields.NEVER,
                 "resnet: feature-map heights at which each block is followed by self-attention (the "
                 "middle always has one)"),
    fields.Field("model.norm", "group", fields.one_of(*NORMS), fields.NEVER,
                 "resnet: GroupNorm before each conv, or none"),
    fields.Field("model.norm_groups", 32, fields.POSITIVE, fields.NEVER,
                 "resnet: GroupNorm groups (must divide every width)"),
    fields.Field("model.latent_grid", False, fields.BOOL, fields.NEVER,
                 "resnet: a latent_dim vector per position of the lowest grid (flattened for the objectives) "
                 "instead of one vector from a Dense layer"),
    fields.Field("model.remat", False, fields.BOOL, fields.FREE,
                 "resnet: recompute each block's activations in the backward pass (less memory, ~1/3 more "
                 "compute); same params and values"),
)


def swish(x):
  return x * jax.nn.sigmoid(x)


class Norm(nn.Module):
  """GroupNorm with float32 statistics and affine params, back in the compute dtype (or identity)."""

  kind: str = "group"
  groups: int = 32

  @nn.compact
  def __call__(self, x):
    if self.kind == "none":
      return x
    y = nn.GroupNorm(num_groups=self.groups, epsilon=1e-6, dtype=jnp.float32, use_fast_variance=False)(x)
    return y.astype(x.dtype)


class ResnetBlock(nn.Module):
  features: int
  norm: str = "group"
  groups: int = 32
  conv_impl: str = "auto"
  dtype: Any = None

  @nn.compact
  def __call__(self, x_BHWC):
    h = layers.conv(self.conv_impl, self.features, 3, 1, "conv1", self.dtype)(
        swish(Norm(self.norm, self.groups, name="norm1")(x_BHWC)))
    h = layers.conv(self.conv_impl, self.features, 3, 1, "conv2", self.dtype)(
        swish(Norm(self.norm, self.groups, name="norm2")(h)))
    if x_BHWC.shape[-1] != self.features:
      x_BHWC = layers.conv(self.conv_impl, self.features, 1, 1, "nin_shortcut", self.dtype)(x_BHWC)
    return x_BHWC + h


class AttnBlock(nn.Module):
  norm: str = "group"
  groups: int = 32
  dtype: Any = None

  @nn.compact
  def __call__(self, x_BHWC):
    b, hh, ww, c = x_BHWC.shape
    h = Norm(self.norm, self.groups, name="norm")(x_BHWC)
    q, k, v = (nn.Dense(c, dtype=self.dtype, name=n)(h).reshape(b, hh * ww, c) for n in ("q", "k", "v"))
    logits_BQK = jnp.einsum("bqc,bkc->bqk", q, k, preferred_element_type=jnp.float32) * c**-0.5
    weights = jax.nn.softmax(logits_BQK, axis=-1).astype(v.dtype)
    out = jnp.einsum("bqk,bkc->bqc", weights, v, preferred_element_type=jnp.float32)
    out = out.astype(v.dtype).reshape(b, hh, ww, c)
    return x_BHWC + nn.Dense(c, dtype=self.dtype, name="proj_out")(out)


@dataclasses.dataclass(frozen=True)
class Spec:
  """The resnet fields of config.model, as plain values (a module attribute must be hashable)."""

  channels: int = 64
  channel_mult: tuple[int, ...] = (1, 2, 4)
  num_res_blocks: int = 2
  attention_resolutions: tuple[int, ...] = ()
  norm: str = "group"
  norm_groups: int = 32
  latent_dim: int = 16
  latent_grid: bool = False
  remat: bool = False
  conv_impl: str = "auto"
  dtype: Any = None

  def widths(self) -> tuple[int, ...]:
    return tuple(self.channels * m for m in self.channel_mult)

  def _block(self, cls):
    return nn.remat(cls) if self.remat else cls

  def resnet(self, features: int, name: str):
    block = self._block(ResnetBlock)
    return block(features, self.norm, self.norm_groups, self.conv_impl, self.dtype, name=name)

  def attention_block(self, name: str):
    return self._block(AttnBlock)(self.norm, self.norm_groups, self.dtype, name=name)

  def attention(self, x, name: str):
    """x, followed by an AttnBlock where its height is one of attention_resolutions."""
    return self.attention_block(name)(x) if x.shape[1] in self.attention_resolutions else x

  def middle(self, x):
    x = self.resnet(x.shape[-1], "mid_block_1")(x)
    x = self.attention_block("mid_attn_1")(x)
    return self.resnet(x.shape[-1], "mid_block_2")(x)

  def conv(self, features: int, kernel: int, stride: int, name: str, dtype="compute"):
    dtype = self.dtype if dtype == "compute" else dtype
    return layers.conv(self.conv_impl, features, kernel, stride, name, dtype)

  def out_norm(self, x):
    return swish(Norm(self.norm, self.norm_groups, name="norm_out")(x))


class Encoder(nn.Module):
  """x_BHWC -> its head's output at the lowest grid (flattened for latent_grid)."""

  spec: Spec = Spec()
  head: heads.Head = heads.Head()

  @nn.compact
  def __call__(self, x_BHWC):
    s, widths = self.spec, self.spec.widths()
    x = s.conv(s.channels, 3, 1, "conv_in")(x_BHWC)
    for i, width in enumerate(widths):
      for j in range(s.num_res_blocks):
        x = s.attention(s.resnet(width, f"down{i}_block{j}")(x), f"down{i}_attn{j}")
      if i != len(widths) - 1:
        x = s.conv(width, 3, 2, f"down{i}_downsample")(x)
    x = s.out_norm(s.middle(x))
    return grid_head(self.head, s.latent_dim, x, s.latent_grid, s.dtype)


class Decoder(nn.Module):
  """The latent -> logits_BHWC."""

  spec: Spec = Spec()
  image_shape: Sequence[int] = (64, 64, 3)
  head: heads.Head = heads.Head()

  @nn.compact
  def __call__(self, z):
    s, widths = self.spec, self.spec.widths()
    h, w, c = self.image_shape
    f = 2 ** (len(widths) - 1)
    if s.latent_grid and self.head.latent != "grid":
      z = z.reshape(z.shape[0], h // f, w // f, s.latent_dim)
      x = nn.Conv(widths[-1], (1, 1), dtype=s.dtype, name="project")(z)
    else:
      x = heads.decoder_head(self.head, z, (h // f, w // f, widths[-1]), s.dtype)
    x = s.middle(x)
    for i in reversed(range(len(widths))):
      for j in range(s.num_res_blocks + 1):
        x = s.attention(s.resnet(widths[i], f"up{i}_block{j}")(x), f"up{i}_attn{j}")
      if i != 0:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # nearest-neighbour x2
        x = s.conv(widths[i], 3, 1, f"up{i}_upsample")(x)
    # float32 logits under a bfloat16 dtype, as the reference's output conv.
    return s.conv(c, 3, 1, "conv_out", dtype=None)(s.out_norm(x).astype(jnp.float32))


def grid_head(head: heads.Head, latent_dim: int, features_BhwC, latent_grid: bool, dtype=None):
  """The encoder head; with latent_grid a dense or gaussian latent is a 1x1 conv per position,
  flattened (gaussian: [mean_B(hwD), logvar_B(hwD)], so the halves stay mean and log-variance)."""
  if not latent_grid or head.latent == "grid":
    return heads.encoder_head(head, latent_dim, features_BhwC, dtype)
  width = 2 * latent_dim if head.latent == "gaussian" else latent_dim
  out = nn.Conv(width, (1, 1), dtype=dtype, name="latent")(features_BhwC).astype(jnp.float32)
  parts = jnp.split(out, 2, axis=-1) if head.latent == "gaussian" else [out]
  return jnp.concatenate([p.reshape(p.shape[0], -1) for p in parts], axis=-1)


def check(cfg: ml_collections.ConfigDict, head: heads.Head) -> None:
  del head  # every head: a vector, a Gaussian (per position with latent_grid), a quantised grid
  if cfg.norm == "group":
    for width, what in ((cfg.channels, "model.channels"),
                        *((cfg.channels * m, f"model.channels={cfg.channels} x channel_mult {m}")
                          for m in cfg.channel_mult)):
      if width % cfg.norm_groups:
        raise ValueError(f"model.norm_groups={cfg.norm_groups}: does not divide the width {width} ({what}); "
                         "use a divisor of every width or model.norm='none'")


def check_attention(cfg: ml_collections.ConfigDict, padded_shape) -> None:
  """Every model.attention_resolutions entry must be the height of a level."""
  heights = {padded_shape[0] // 2**i for i in range(len(cfg.channel_mult))}
  for r in cfg.attention_resolutions:
    if r not in heights:
      levels = tuple(sorted(heights, reverse=True))
      raise ValueError(f"model.attention_resolutions={tuple(cfg.attention_resolutions)!r}: {r} is not the "
                       f"height of a level at this image size; the levels are {levels}")


def spec(cfg: ml_collections.ConfigDict) -> Spec:
  return Spec(int(cfg.channels), tuple(int(m) for m in cfg.channel_mult), int(cfg.num_res_blocks),
              tuple(int(r) for r in cfg.attention_resolutions), cfg.norm, int(cfg.norm_groups),
              int(cfg.latent_dim), bool(cfg.latent_grid), bool(cfg.remat), cfg.conv_impl, compute_dtype(cfg))


def build(cfg: ml_collections.ConfigDict, image_shape, head: heads.Head):
  check(cfg, head)
  check_attention(cfg, image_shape)
  return Encoder(spec(cfg), head), Decoder(spec(cfg), tuple(image_shape), head)


def downsampling(cfg) -> int:
  return 2 ** (len(cfg.channel_mult) - 1)


def latent_size(cfg, padded_shape) -> int | None:
  """The vector latent's size with latent_grid: (H/f)(W/f)latent_dim; None: model.latent_dim."""
  if not cfg.latent_grid:
    return None
  f = downsampling(cfg)
  return padded_shape[0] // f * (padded_shape[1] // f) * int(cfg.latent_dim)


ARCHITECTURE = Architecture(build, downsampling=downsampling, fields=FIELDS, module=__name__,
                            latent_size=latent_size, check=check)
