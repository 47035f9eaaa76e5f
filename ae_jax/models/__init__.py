"""Architectures by name (`model.name`), each built from `config.model` and the head an objective needs.

`build(config.model, image_shape, head)` gives an `Autoencoder`. An architecture
is an `Architecture` record in ARCHITECTURES; `register(name, Architecture(...))`
adds your own (docs/extending.md). A model never reads another config section:
what the objective needs comes in as the `Head`.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections

from ae_jax import fields, parallel
from ae_jax.models import conv64, heads, layers, onednn, reference, resnet
from ae_jax.models.autoencoder import OUTPUTS, Architecture, Autoencoder, compute_dtype, padded_shape
from ae_jax.models.heads import LATENTS, Head

DTYPES = ("float32", "bfloat16")


def _conv_impl_expected() -> str:
  reason = onednn.unavailable_reason()
  why = f"; 'onednn' is not available here: {reason}" if reason else ""
  return f"one of {('auto', *layers.IMPLS)}{why}"


ARCHITECTURES: dict[str, Architecture] = {"reference": reference.ARCHITECTURE, "resnet": resnet.ARCHITECTURE,
                                          "conv64": conv64.ARCHITECTURE}

FIELDS = (
    fields.Field("model.name", "reference", fields.one_of_keys(ARCHITECTURES, "one"), fields.NEVER,
                 "the architecture: `reference` (the Keras example's conv stacks), `resnet` (latent "
                 "diffusion's residual encoder/decoder), `conv64` (the beta-VAE / disentanglement_lib 64x64 "
                 "net) or one you registered"),
    fields.Field("model.latent_dim", 16, fields.POSITIVE, fields.NEVER,
                 "size of the latent z_BD (of each grid vector, for a grid latent)"),
    fields.Field("model.num_codes", 512, fields.POSITIVE, fields.NEVER,
                 "grid latents (VQ): codebook size K"),
    fields.Field("model.pad", False, fields.BOOL, fields.NEVER,
                 "zero-pad images that the downsampling does not divide to the next multiple, crop the "
                 "output back"),
    fields.Field("model.output", "probabilities", fields.one_of(*OUTPUTS), fields.ALLOW,
                 "what the model's __call__ returns; losses always use logits"),
    fields.Field("model.conv_impl", "auto", fields.Check(
        lambda v: v in ("auto", *layers.IMPLS) and (v != "onednn" or onednn.unavailable_reason() is None),
        _conv_impl_expected), fields.FREE,
                 "same params and numerics, different speed; `auto`: per backend (layers.resolve): `onednn` "
                 "on CPU where its extension loads, else `mixed`; `xla` on GPU/TPU"),
    fields.Field("model.dtype", "float32", fields.one_of(*DTYPES), fields.ALLOW,
                 "compute dtype; params and optimizer state stay float32"),
    fields.Field("model.shard", 1, fields.POSITIVE, fields.FREE,
                 "parallel='mesh': split every param (and its optimizer state) of at least "
                 "model.shard_min_size elements along its last axis over this many devices (a second mesh "
                 "axis); 1: replicated"),
    fields.Field("model.shard_min_size", parallel.SHARD_MIN_SIZE, fields.POSITIVE, fields.FREE,
                 "model.shard > 1: smaller params stay replicated"),
)


def register(name: str, architecture: Architecture) -> Architecture:
  """Adds an architecture under `name` (`model.name=name`); its fields join the config."""
  return fields.register(ARCHITECTURES, name, architecture, "model", section="model")


def get(name: str) -> Architecture:
  return fields.lookup(ARCHITECTURES, name, "model.name")


def check(cfg: ml_collections.ConfigDict, head: Head) -> None:
  """The architecture's own check of its fields and the head the objective needs (config.validate)."""
  arch = get(cfg.name)
  if arch.check is not None:
    arch.check(cfg, head)


def check_image_shape(image_shape: Sequence[int], cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError unless the architecture's downsampling divides H and W (or model.pad is on)."""
  if len(image_shape) != 3 or any(int(d) <= 0 for d in image_shape):
    raise ValueError(f"image_shape={tuple(image_shape)}: expected (H, W, C) with positive sizes")
  factor = get(cfg.name).downsampling(cfg)
  padded = padded_shape(image_shape, factor)
  if not cfg.pad and padded != tuple(int(d) for d in image_shape):
    raise ValueError(
        f"image_shape={tuple(image_shape)}: H and W must be divisible by {factor}, the downsampling "
        f"of model.name={cfg.name!r} with these model fields; set model.pad=True to pad the input to "
        f"{padded} and crop the output back")


DENSE = Head("dense")


def build(cfg: ml_collections.ConfigDict, image_shape: Sequence[int], head: Head = DENSE) -> Autoencoder:
  """The Autoencoder of architecture cfg.name (cfg is `config.model`) for images of image_shape."""
  check_image_shape(image_shape, cfg)
  arch = get(cfg.name)
  factor = arch.downsampling(cfg)
  shape = tuple(int(d) for d in image_shape)
  padded = padded_shape(shape, factor)
  encoder, decoder = arch.build(cfg, padded, head)
  size = arch.latent_size(cfg, padded) if arch.latent_size and head.latent != "grid" else None
  return Autoencoder(encoder=encoder, decoder=decoder, image_shape=shape, padded_shape=padded,
                     downsampling=factor, head=head, latent_dim=int(cfg.latent_dim) if size is None else size,
                     num_codes=int(cfg.num_codes), output=cfg.output)


def init_params(model: Autoencoder, key: jax.Array) -> dict:
  """Initial params for one example of the model's image shape.

  Jitted: one compile instead of one per initializer op (1.8 s instead of 4.4 s
  on CPU), with bit-identical values.
  """
  x = jnp.zeros((1, *model.image_shape), jnp.float32)
  return jax.jit(lambda k: model.init(k, x)["params"])(key)


def count_params(tree) -> int:
  return int(sum(x.size for x in jax.tree.leaves(tree)))


__all__ = ["ARCHITECTURES", "Architecture", "Autoencoder", "DTYPES", "FIELDS", "Head", "LATENTS", "OUTPUTS",
           "build", "check", "check_image_shape", "compute_dtype", "conv64", "count_params", "get", "heads",
           "init_params", "layers", "padded_shape", "reference", "register", "resnet"]
