"""oneDNN convolutions inside jitted CPU programs (conv_impl='onednn').

The C++ extension `ae_jax.models._onednn_conv` (csrc/onednn_conv.cc, built by the
project's install when it can be) exposes oneDNN's convolution forward, backward-data
and backward-weights as XLA FFI handlers; `jax.ffi.ffi_call` puts them in the program.
Three linear maps of one NHWC/HWIO convolution geometry,

  forward(x, w) = y,   backward_data(dy, w) = dx,   backward_weights(x, dy) = dw,

are each other's transposes, so each one's VJP is made of the other two and
gradients of any order stay on oneDNN. A transposed conv (nn.ConvTranspose,
transpose_kernel=False) is backward_data with the kernel flipped and its in/out
channels swapped.

Why: XLA:CPU runs the reference model's 1-channel convs at 5-32% of its matmul rate;
TensorFlow (the Keras reference) calls oneDNN for every convolution.
"""

import ctypes
import functools
import importlib.metadata
import os
from typing import Any, NamedTuple

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from ae_jax.models import col2im, padding

_TARGET = "ae_jax_onednn_{}"


@functools.cache
def _extension() -> tuple[Any, str | None]:
  """(the extension module, None), or (None, why it cannot be used here)."""
  try:
    lib = next(f for f in importlib.metadata.files("onednn-cpu-gomp") or () if f.name == "libdnnl.so.3")
  except (importlib.metadata.PackageNotFoundError, StopIteration):
    return None, "the oneDNN wheel (onednn-cpu-gomp, Linux x86-64 only) is not installed"
  # A GNU OpenMP team spins after each call by default, which takes a core from XLA's
  # own threads; a user's OMP_WAIT_POLICY still wins. Read once, when libgomp loads.
  os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  try:
    ctypes.CDLL(str(lib.locate()), mode=ctypes.RTLD_GLOBAL)  # the extension's NEEDED libdnnl.so.3
    from ae_jax.models import _onednn_conv
  except ImportError as e:
    try:
      from ae_jax.models._onednn_build import REASON
      return None, f"the install did not build the extension ({REASON})"
    except ImportError:
      return None, f"the extension is not installed ({e}); install ae_jax with pip"
  except OSError as e:
    return None, f"the oneDNN library does not load ({e})"
  # One OpenMP team per call, as wide as the CPUs this process may use: the calling XLA
  # thread is its first member, so XLA's pool and the team share the cores.
  if "OMP_NUM_THREADS" not in os.environ and hasattr(os, "sched_getaffinity"):
    _onednn_conv.set_num_threads(len(os.sched_getaffinity(0)))
  for name, capsule in _onednn_conv.handlers().items():
    jax.ffi.register_ffi_target(_TARGET.format(name), capsule, platform="cpu")
  return _onednn_conv, None


def loads() -> bool:
  """Whether the extension and its oneDNN library load in this process."""
  return _extension()[1] is None


def unavailable_reason() -> str | None:
  """None where conv_impl='onednn' can run, else one line saying why not."""
  if jax.default_backend() != "cpu":
    return f"it runs on CPU only, and JAX's default backend is {jax.default_backend()!r}"
  return _extension()[1]


def check_available() -> None:
  """Raises a one-line ValueError where conv_impl='onednn' cannot run."""
  reason = unavailable_reason()
  if reason is not None:
    raise ValueError(f"conv_impl='onednn' is not available: {reason}; use 'auto', 'mixed' or 'xla'")


def extension():
  """The loaded extension (set_num_threads, implementation, version, cached_primitives)."""
  check_available()
  return _extension()[0]


class Geometry(NamedTuple):
  """Strides and (lo, hi) padding of one 2-D convolution, hashable for nondiff_argnums."""

  strides: tuple[int, int]
  pad_lo: tuple[int, int]
  pad_hi: tuple[int, int]


def _ffi(name: str, out: jax.ShapeDtypeStruct, a, b, g: Geometry):
  check_available()  # loads the extension and registers its handlers, once
  (sh, sw), (plh, plw), (phh, phw) = g
  ints = {k: np.int64(v) for k, v in dict(sh=sh, sw=sw, plh=plh, plw=plw, phh=phh, phw=phw).items()}
  # 'sequential' (a loop) serves any vmap that _batched's rule does not see: one that reaches
  # the call through a derivative (jax.jacrev vmaps the pullback), where custom_vmap drops out.
  return jax.ffi.ffi_call(_TARGET.format(name), out, vmap_method="sequential")(a, b, **ints)


def _batched(call, fold: int | None):
  """`call(a, b)` with a vmap rule: a batch on operand `fold` alone joins the image axis
  (one oneDNN call); any other batching loops over it (lax.map)."""
  @jax.custom_batching.custom_vmap
  def f(a, b):
    return call(a, b)

  @f.def_vmap
  def rule(axis_size, in_batched, a, b):
    if fold is not None and in_batched[fold] and not in_batched[1 - fold]:
      ops = [a, b]
      v, n = ops[fold].shape[:2]
      ops[fold] = ops[fold].reshape(v * n, *ops[fold].shape[2:])
      y = call(*ops)
      return y.reshape(v, n, *y.shape[1:]), True
    a = a if in_batched[0] else jnp.broadcast_to(a, (axis_size, *a.shape))
    b = b if in_batched[1] else jnp.broadcast_to(b, (axis_size, *b.shape))
    return lax.map(lambda ab: call(*ab), (a, b)), True
  return f


def _out_hw(size: int, k: int, s: int, lo: int, hi: int) -> int:
  return (size + lo + hi - k) // s + 1


def _forward(x, w, g):
  b, h, wd, _ = x.shape
  kh, kw, _, c_out = w.shape
  oh = _out_hw(h, kh, g.strides[0], g.pad_lo[0], g.pad_hi[0])
  ow = _out_hw(wd, kw, g.strides[1], g.pad_lo[1], g.pad_hi[1])
  out = jax.ShapeDtypeStruct((b, oh, ow, c_out), x.dtype)
  return _batched(lambda x, w: _ffi("forward", out.update(shape=(x.shape[0], *out.shape[1:])), x, w, g),
                  fold=0)(x, w)


def _backward_data(dy, w, g, x_hw):
  out = jax.ShapeDtypeStruct((dy.shape[0], *x_hw, w.shape[2]), dy.dtype)
  return _batched(lambda dy, w: _ffi("backward_data", out.update(shape=(dy.shape[0], *out.shape[1:])), dy,
                                     w, g), fold=0)(dy, w)


def _backward_weights(x, dy, g, k_hw):
  out = jax.ShapeDtypeStruct((*k_hw, x.shape[-1], dy.shape[-1]), x.dtype)
  return _batched(lambda x, dy: _ffi("backward_weights", out, x, dy, g), fold=None)(x, dy)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv(x_BHWC, w_HWIO, g: Geometry):
  """lax.conv_general_dilated(x, w, strides, padding, NHWC/HWIO/NHWC) on oneDNN."""
  return _forward(x_BHWC, w_HWIO, g)


# Each fwd rule calls its own custom_vjp function, not the FFI call, so that a derivative
# of the VJP (grad of grad) differentiates these functions again instead of the raw call.
def _conv_fwd(x, w, g):
  return conv(x, w, g), (x, w)


def _conv_bwd(g, res, dy):
  x, w = res
  return conv_data_grad(dy, w, g, x.shape[1:3]), conv_kernel_grad(x, dy, g, w.shape[:2])


conv.defvjp(_conv_fwd, _conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_data_grad(dy_BHWC, w_HWIO, g: Geometry, x_hw: tuple[int, int]):
  """The input gradient of `conv(x, w, g)` for an x of spatial shape x_hw."""
  return _backward_data(dy_BHWC, w_HWIO, g, x_hw)


def _data_fwd(dy, w, g, x_hw):
  return conv_data_grad(dy, w, g, x_hw), (dy, w)


def _data_bwd(g, x_hw, res, dx):
  dy, w = res
  return conv(dx, w, g), conv_kernel_grad(dx, dy, g, w.shape[:2])


conv_data_grad.defvjp(_data_fwd, _data_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_kernel_grad(x_BHWC, dy_BHWC, g: Geometry, k_hw: tuple[int, int]):
  """The kernel gradient of `conv(x, w, g)` for a kernel of spatial shape k_hw."""
  return _backward_weights(x_BHWC, dy_BHWC, g, k_hw)


def _kernel_fwd(x, dy, g, k_hw):
  return conv_kernel_grad(x, dy, g, k_hw), (x, dy)


def _kernel_bwd(g, k_hw, res, dw):
  x, dy = res
  return conv_data_grad(dy, dw, g, x.shape[1:3]), conv(x, dw, g)


conv_kernel_grad.defvjp(_kernel_fwd, _kernel_bwd)


def _same_conv_geometry(hw, k_hw, strides) -> Geometry:
  """lax's SAME padding for a strided conv."""
  (lo_h, hi_h, _), (lo_w, hi_w, _) = (padding.same_conv(n, k, s) for n, k, s in zip(hw, k_hw, strides))
  return Geometry(tuple(strides), (lo_h, lo_w), (hi_h, hi_w))


def _same_transpose_geometry(hw, k_hw, strides) -> tuple[Geometry, tuple[int, int]]:
  """The conv whose input gradient is lax.conv_transpose(..., 'SAME', transpose_kernel=False),
  and how many trailing output rows/cols it leaves at zero.

  That transpose correlates the s-dilated input, padded pad_a in front, with the kernel;
  backward-data scatters with the flipped kernel, so its conv pads k-1-pad_a in front and
  whatever brings the conv of the s*h output back to h behind. Where that is negative (a
  kernel smaller than its stride) the conv never reads the last rows: they stay zero.
  """
  lo, hi, crop = [], [], []
  for size, k, s in zip(hw, k_hw, strides):
    lo.append(k - 1 - padding.same_transpose_lo(k, s))
    behind = (size - 1) * s + k - size * s - lo[-1]
    hi.append(max(behind, 0))
    crop.append(max(-behind, 0))
  return Geometry(tuple(strides), tuple(lo), tuple(hi)), tuple(crop)


def conv_same(x_BHWC, kernel_HWIO, strides):
  """nn.Conv(padding='SAME') on oneDNN."""
  return conv(x_BHWC, kernel_HWIO, _same_conv_geometry(x_BHWC.shape[1:3], kernel_HWIO.shape[:2], strides))


def _onednn_conv_transpose_same(x_BHWC, kernel_HWIO, strides):
  hw = x_BHWC.shape[1:3]
  g, (crop_h, crop_w) = _same_transpose_geometry(hw, kernel_HWIO.shape[:2], strides)
  w = jnp.flip(kernel_HWIO, (0, 1)).swapaxes(2, 3)
  y = conv_data_grad(x_BHWC, w, g, (hw[0] * strides[0] - crop_h, hw[1] * strides[1] - crop_w))
  return jnp.pad(y, ((0, 0), (0, crop_h), (0, crop_w), (0, 0))) if crop_h or crop_w else y


@jax.custom_vjp
def _one_channel_transpose(x_BHWC, kernel_HWIO):
  """The forward as col2im, the gradients on oneDNN.

  oneDNN vectorises along channels, so with one output channel its forward ran at 15
  GFLOP/s (3.8 ms at batch 128) where col2im runs at 56; its gradients run at 89-100.
  """
  return col2im.conv_transpose_same(x_BHWC, kernel_HWIO, (1, 1))


def _one_channel_fwd(x, kernel):
  return _one_channel_transpose(x, kernel), (x, kernel)


def _one_channel_bwd(res, dy):
  x, kernel = res
  return jax.vjp(lambda x, k: _onednn_conv_transpose_same(x, k, (1, 1)), x, kernel)[1](dy)


_one_channel_transpose.defvjp(_one_channel_fwd, _one_channel_bwd)


def conv_transpose_same(x_BHWC, kernel_HWIO, strides):
  """nn.ConvTranspose(padding='SAME') on oneDNN: backward-data of the conv it transposes
  (a stride-1 one to one channel runs its forward as col2im)."""
  if tuple(strides) == (1, 1) and kernel_HWIO.shape[-1] == 1:
    return _one_channel_transpose(x_BHWC, kernel_HWIO)
  return _onednn_conv_transpose_same(x_BHWC, kernel_HWIO, strides)


@jax.custom_vjp
def add_bias(y_BHWC, bias_C):
  """y + bias, whose bias gradient is one matmul with a ones vector.

  In the reference step XLA:CPU ran the bias gradients as windowed reductions of the
  relu-masked output gradient: 5.9 + 1.8 of 53 ms at batch 128 (`python -m
  tools.profile_step --conv_impl=onednn`).
  """
  return y_BHWC + bias_C


def _add_bias_fwd(y, bias):
  return y + bias, None


def _add_bias_bwd(_, dy):
  flat = dy.reshape(-1, dy.shape[-1])
  return dy, jnp.ones((flat.shape[0],), dy.dtype) @ flat


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


class _Layer(nn.Module):
  """The params of nn.Conv / nn.ConvTranspose (SAME padding), created in their order."""

  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.linear.default_kernel_init
  bias_init: Any = nn.initializers.zeros_init()
  transpose: bool = False

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    check_available()
    kh, kw = self.kernel_size
    shape = (kh, kw, x_BHWC.shape[-1], self.features)
    kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x_BHWC, kernel, bias, dtype=self.dtype)
    fn = conv_transpose_same if self.transpose else conv_same
    return add_bias(fn(x, kernel, tuple(self.strides)), bias)


class Conv(_Layer):
  """nn.Conv(features, kernel_size, strides, padding='SAME') on oneDNN."""


class ConvTranspose(_Layer):
  """nn.ConvTranspose(features, kernel_size, strides, padding='SAME') on oneDNN."""

  transpose: bool = True
