"""The independent computations tests check the library against: a float64 numpy reference model,
and the tiny configs the unit tests build models from."""

import functools

import jax
import numpy as np

from ae_jax import config as config_lib
from ae_jax import train

# A small model keeps the numpy reference quick; the structure is the reference one.
IMAGE_SHAPE = (8, 8, 1)
TINY_MODEL = {"model.filters": (2, 3), "model.kernel_size": 3, "model.latent_dim": 2, "model.num_codes": 5}


def set_fields(c, **dotted):
  """c with fields set by their dotted names given as keyword names with '__' for '.'."""
  for name, value in dotted.items():
    *parents, leaf = name.replace("__", ".").split(".")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def data_config(**fields):
  """config.data with every source's fields at their defaults, then `fields` set."""
  c = config_lib.get_default().data
  c.update(fields)
  return c


def tiny_config(objective: str = "ae", **dotted):
  """The default config with the tiny reference model and `objective`; dotted fields as set_fields."""
  c = config_lib.get_default()
  c.objective = objective
  set_fields(c, **{k.replace(".", "__"): v for k, v in TINY_MODEL.items()})
  c.factor_vae.widths = (16, 16)  # FactorVAE's discriminator, small
  return set_fields(c, **dotted)


def tiny_model(c):
  """The model of a tiny config, for IMAGE_SHAPE images."""
  return train.build_model(c, IMAGE_SHAPE)


def as64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def conv_same(x, k, b, stride):
  """XLA 'SAME' cross-correlation: x [B,H,W,Ci], k [kh,kw,Ci,Co]."""
  kh, kw = k.shape[:2]
  h, w = x.shape[1:3]
  oh, ow = -(-h // stride), -(-w // stride)
  ph = max((oh - 1) * stride + kh - h, 0)
  pw = max((ow - 1) * stride + kw - w, 0)
  xp = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
  out = np.zeros((x.shape[0], oh, ow, k.shape[3]))
  for i in range(kh):
    for j in range(kw):
      patch = xp[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :]
      out += np.einsum("bhwc,cd->bhwd", patch, k[i, j])
  return out + b


def conv_transpose_same(x, k, b, stride):
  """lax.conv_transpose 'SAME' (kernel not flipped): dilate the input, pad, correlate."""
  kh = k.shape[0]
  bsz, h, w, c = x.shape
  xd = np.zeros((bsz, (h - 1) * stride + 1, (w - 1) * stride + 1, c))
  xd[:, ::stride, ::stride, :] = x
  pad_len = kh + stride - 2
  lo = kh - 1 if stride > kh - 1 else int(np.ceil(pad_len / 2))
  hi = pad_len - lo
  xp = np.pad(xd, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
  oh, ow = h * stride, w * stride
  out = np.zeros((bsz, oh, ow, k.shape[3]))
  for i in range(kh):
    for j in range(kh):
      out += np.einsum("bhwc,cd->bhwd", xp[:, i:i + oh, j:j + ow, :], k[i, j])
  return out + b


def encode(p, x):
  """The tiny reference encoder in float64: two stride-2 convs with ReLU, the dense latent."""
  e = as64(p)["encoder"]
  h = np.maximum(conv_same(x, e["conv0"]["kernel"], e["conv0"]["bias"], 2), 0)
  h = np.maximum(conv_same(h, e["conv1"]["kernel"], e["conv1"]["bias"], 2), 0)
  return h.reshape(len(x), -1) @ e["latent"]["kernel"] + e["latent"]["bias"]


def logits(p, x):
  """The tiny reference autoencoder's logits in float64."""
  d = as64(p)["decoder"]
  z = encode(p, x)
  h = (z @ d["project"]["kernel"] + d["project"]["bias"]).reshape(len(x), 2, 2, 3)
  h = np.maximum(conv_transpose_same(h, d["deconv0"]["kernel"], d["deconv0"]["bias"], 2), 0)
  h = np.maximum(conv_transpose_same(h, d["deconv1"]["kernel"], d["deconv1"]["bias"], 2), 0)
  return conv_transpose_same(h, d["to_pixels"]["kernel"], d["to_pixels"]["bias"], 1)


def mse_loss(p, inputs, target):
  return np.mean((1.0 / (1.0 + np.exp(-logits(p, inputs))) - target) ** 2)


def reference(image_shape=(28, 28, 1), objective: str = "ae", **model_fields):
  """The reference architecture for image_shape with model fields set (conv_impl='xla', ...)."""
  c = config_lib.get_default()
  c.objective = objective
  c.model.update(model_fields)
  return train.build_model(c, image_shape)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _apply(model, params, x, method):
  return model.apply({"params": params}, x, method=method)


def apply(model, params, x, method: str | None = None):
  """model.apply({'params': params}, x, method=method), jitted: one compilation instead of one per
  operation (eager ops compile one by one, which dominated some tests)."""
  return _apply(model, params, x, method)
