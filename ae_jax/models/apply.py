"""A trained model applied to many examples: in fixed-size batches (one compilation), returning numpy."""

import functools

import jax
import numpy as np

from ae_jax.data import sampler, transforms


@functools.partial(jax.jit, static_argnums=(0, 1))
def _apply(model, method: str, params, x):
  out = model.apply({"params": params}, x, method=method)
  return jax.nn.sigmoid(out) if method in ("logits", "decode_logits") else out


def check_batch(what: str, x, expected: tuple) -> np.ndarray:
  """x (uint8 images become float) if its shape is [N, *expected]; else a one-line ValueError."""
  x = transforms.to_float(np.asarray(x))
  if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != tuple(expected) or len(x) == 0:
    one = " (one example: x[None])" if tuple(x.shape) == tuple(expected) else ""
    raise ValueError(f"{what}: shape {tuple(x.shape)}, expected [N, {', '.join(map(str, expected))}]{one}")
  return x


def batched(model, method: str, params, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
  """model.apply(method) over x in fixed-size batches (the last one padded): one compilation."""
  return np.concatenate([np.asarray(_apply(model, method, params, chunk))[:valid]
                         for _, chunk, valid in sampler.padded_batches(x, batch_size)])


def embed(model, params, images_NHWC, batch_size: int = 1000) -> np.ndarray:
  """Images [N, H, W, C] (uint8 or float in [0, 1]) -> latents [N, *model.latent_shape()]."""
  return batched(model, "encode", params, check_batch("images_NHWC", images_NHWC, model.image_shape),
                 batch_size)


def reconstruct(model, params, images_NHWC, batch_size: int = 1000) -> np.ndarray:
  """Images [N, H, W, C] -> reconstructions in [0, 1] (sigmoid of the logits, whatever model.output says)."""
  return batched(model, "logits", params, check_batch("images_NHWC", images_NHWC, model.image_shape),
                 batch_size)


def decode(model, params, z_ND, batch_size: int = 1000) -> np.ndarray:
  """Latents [N, *model.latent_shape()] -> images in [0, 1] (a grid is quantised first)."""
  return batched(model, "decode_logits", params, check_batch("z_ND", z_ND, model.latent_shape()), batch_size)
