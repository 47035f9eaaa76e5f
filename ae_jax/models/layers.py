"""Convolution layers written as shifted slices and one matmul, fast on XLA:CPU.

`Conv` and `ConvTranspose` hold exactly the params of `nn.Conv` / `nn.ConvTranspose`
(SAME padding): `kernel` [kh, kw, C_in, C_out] and `bias` [C_out], created in the
same order with the same initializers, so either implementation loads the
other's checkpoints and inits to the same values from the same key.

Why: XLA:CPU runs the backward pass of a stride-2 `lax.conv_transpose` through
a slow dilated-convolution path (~300 of ~380 ms of a batch-128 reference step),
and inside `lax.scan` it does not hand convolutions to its fast library at all.
A matmul is fast everywhere. Each layer expands the narrower side only:
- `Conv` gathers k*k shifted input slices (im2col) and multiplies once; the
  reference convs have C_in <= C_out, so the gathered tensor stays small.
- `ConvTranspose` multiplies first, x_BHWC @ kernel -> one [B, H, W, k*k*C_out]
  tensor, then overlap-adds each tap at its strided output position (col2im,
  `lax.pad` with interior padding); no input is ever duplicated, and the FLOPs
  are exactly those of the convolution.
"""

from collections.abc import Sequence
import functools
from typing import Any

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from ae_jax.models import col2im, onednn, padding

IMPLS = ("xla", "subpixel", "matmul", "mixed", "onednn")

# Per-backend conv implementation for conv_impl='auto', from
# `python -m tools.benchmark` and `python -m tools.conv_ops` (numbers in tools/BENCHMARKS.md).
# CPU: 'onednn' wherever its extension loads. On the 2-core machine, one invocation
# (2026-12-01, `python -m tools.benchmark --models=ae --impls=mixed,onednn --keras`):
# reference AE training 2,361 / 1,849 images/s at batch 128 / 32 against mixed's 1,153 /
# 1,159 and Keras's 2,114 / 1,750; eval 6,750 / 6,083 against mixed's 6,911 / 5,473.
# Without it, 'mixed' (2026-11-25: 3,137 / 2,881 against xla's 347 / 360):
# XLA spends ~270 of ~370 ms of a batch-128 step in the kernel gradients of the two
# stride-2 transposed convs (a dilated convolution); 'subpixel' turns them into stride-1
# convs, 'mixed' also keeps XLA's faster input gradient and runs the 1-channel output conv
# as col2im. GPU/TPU: XLA's own conv (cuDNN, TPU convs) has no such slow path, so 'xla'
# is kept there ('onednn' is a CPU kernel and cannot run there).
AUTO_CONV_IMPL = {"cpu": "mixed"}


def resolve(conv_impl: str, platform: str | None = None) -> str:
  """'auto' -> the measured choice for `platform` (default: JAX's default backend)."""
  if conv_impl != "auto":
    return conv_impl
  platform = platform or jax.default_backend()
  if platform == "cpu" and onednn.loads():
    return "onednn"
  return AUTO_CONV_IMPL.get(platform, "xla")


def _pair(v) -> tuple[int, int]:
  return (int(v), int(v)) if isinstance(v, int) else tuple(int(d) for d in v)


class Conv(nn.Module):
  """nn.Conv(features, kernel_size, strides, padding='SAME') as im2col + one matmul."""

  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] | int = 1
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.linear.default_kernel_init
  bias_init: Any = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    (kh, kw), (sh, sw) = _pair(self.kernel_size), _pair(self.strides)
    c_in = x_BHWC.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (kh, kw, c_in, self.features), self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x_BHWC, kernel, bias, dtype=self.dtype)
    _, h, w, _ = x.shape
    h_lo, h_hi, h_out = padding.same_conv(h, kh, sh)
    w_lo, w_hi, w_out = padding.same_conv(w, kw, sw)
    xp = jnp.pad(x, ((0, 0), (h_lo, h_hi), (w_lo, w_hi), (0, 0)))
    # Tap (i, j) of output (y, x) reads input (y*s + i, x*s + j): one strided slice per tap.
    taps = [lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + (h_out - 1) * sh + 1,
                                         j + (w_out - 1) * sw + 1, c_in), (1, sh, sw, 1))
            for i in range(kh) for j in range(kw)]
    patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
    y = patches @ kernel.reshape(kh * kw * c_in, self.features)
    return y + bias


class ConvTranspose(nn.Module):
  """nn.ConvTranspose(features, kernel_size, strides, padding='SAME') as one matmul + col2im."""

  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] | int = 1
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.linear.default_kernel_init
  bias_init: Any = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    (kh, kw), (sh, sw) = _pair(self.kernel_size), _pair(self.strides)
    c_in = x_BHWC.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (kh, kw, c_in, self.features), self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x_BHWC, kernel, bias, dtype=self.dtype)
    return col2im.conv_transpose_same(x, kernel, (sh, sw)) + bias


def _subpixel_conv_transpose(x, kernel, strides: tuple[int, int]) -> jax.Array:
  """lax.conv_transpose(x, kernel, strides, 'SAME') as one stride-1 conv per output phase."""
  (kh, kw, _, c_out), (sh, sw) = kernel.shape, strides
  b, h, w, _ = x.shape

  # Output s*i + r reads input i + d through tap t where d = (r + t - pad_lo) / s.
  def taps(k, s, pad_lo):
    return [(r, t, (r + t - pad_lo) // s) for r in range(s) for t in range(k) if (r + t - pad_lo) % s == 0]
  th = taps(kh, sh, padding.same_transpose_lo(kh, sh))
  tw = taps(kw, sw, padding.same_transpose_lo(kw, sw))
  phases = []
  for rh in range(sh):
    for rw in range(sw):
      hs = [(t, d) for r, t, d in th if r == rh]
      ws = [(t, d) for r, t, d in tw if r == rw]
      if not hs or not ws:  # no tap reaches this phase (kernel smaller than stride)
        phases.append(jnp.zeros((b, h, w, c_out), x.dtype))
        continue
      # Taps in increasing offset d, the order a correlation's window reads them.
      hs, ws = sorted(hs, key=lambda td: td[1]), sorted(ws, key=lambda td: td[1])
      sub = kernel[jnp.array([t for t, _ in hs])][:, jnp.array([t for t, _ in ws])]
      phases.append(lax.conv_general_dilated(
          x, sub, (1, 1), ((-hs[0][1], hs[-1][1]), (-ws[0][1], ws[-1][1])),
          dimension_numbers=("NHWC", "HWIO", "NHWC")))
  y = jnp.stack(phases, axis=3).reshape(b, h, w, sh, sw, c_out).transpose(0, 1, 3, 2, 4, 5)
  return y.reshape(b, h * sh, w * sw, c_out)


def _xla_conv_transpose(x, kernel, strides: tuple[int, int]) -> jax.Array:
  """What nn.ConvTranspose(padding='SAME') computes."""
  return lax.conv_transpose(x, kernel, strides, "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def mixed_conv_transpose(x, kernel, strides: tuple[int, int]) -> jax.Array:
  """A strided SAME transposed conv: the sub-pixel forward and kernel gradient, XLA's input gradient.

  `python -m tools.conv_ops` (batch 128, 2 cores, ms for the reference's two
  stride-2 transposed convs, tools/BENCHMARKS.md): the input gradient of
  lax.conv_transpose is one strided conv, 1.24 / 2.59 ms against sub-pixel's 1.64 /
  4.55; its kernel gradient is a dilated conv, 84 / 313 ms against sub-pixel's
  1.78 / 5.95; the forward passes are 1.85 / 6.03 against 1.40 / 3.67.
  """
  return _subpixel_conv_transpose(x, kernel, strides)


def _mixed_fwd(x, kernel, strides):
  return _subpixel_conv_transpose(x, kernel, strides), (x, kernel)


def _mixed_bwd(strides, residuals, dy):
  x, kernel = residuals
  dx = jax.vjp(lambda x: _xla_conv_transpose(x, kernel, strides), x)[1](dy)[0]
  dkernel = jax.vjp(lambda k: _subpixel_conv_transpose(x, k, strides), kernel)[1](dy)[0]
  return dx, dkernel


mixed_conv_transpose.defvjp(_mixed_fwd, _mixed_bwd)


class SubpixelConvTranspose(nn.Module):
  """nn.ConvTranspose(..., padding='SAME') as one stride-1 conv to s*s phases + depth-to-space.

  mixed=True takes the input gradient from XLA's own transposed conv (mixed_conv_transpose).
  """

  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] | int = 1
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.linear.default_kernel_init
  bias_init: Any = nn.initializers.zeros_init()
  mixed: bool = False

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    (kh, kw), strides = _pair(self.kernel_size), _pair(self.strides)
    c_in = x_BHWC.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (kh, kw, c_in, self.features), self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x_BHWC, kernel, bias, dtype=self.dtype)
    fn = mixed_conv_transpose if self.mixed else _subpixel_conv_transpose
    return fn(x, kernel, strides) + bias


def conv(impl: str, features: int, kernel_size, strides, name: str, dtype=None) -> nn.Module:
  """A SAME-padded conv: 'matmul' gives Conv (im2col), 'onednn' onednn.Conv, the others nn.Conv."""
  impl = resolve(impl)
  if impl not in IMPLS:
    raise ValueError(f"conv_impl={impl!r}: expected one of {IMPLS} or 'auto'")
  if impl == "onednn":
    cls = onednn.Conv
  else:
    cls = Conv if impl == "matmul" else functools.partial(nn.Conv, padding="SAME")
  return cls(features, _pair(kernel_size), strides=_pair(strides), dtype=dtype, name=name)


def conv_transpose(impl: str, features: int, kernel_size, strides, name: str | None = None,
                   dtype=None) -> nn.Module:
  """A SAME-padded transposed conv: 'xla' nn.ConvTranspose, 'matmul' ConvTranspose (col2im),
  'subpixel' SubpixelConvTranspose when strided (a stride-1 one is a plain conv already);
  'mixed' SubpixelConvTranspose(mixed=True) when strided, else ConvTranspose (the
  reference's 1-channel output conv: 3.5 ms forward and both gradients as col2im
  against 12.6 as XLA's conv at batch 128, tools/BENCHMARKS.md); 'onednn' onednn.ConvTranspose."""
  impl = resolve(impl)
  if impl not in IMPLS:
    raise ValueError(f"conv_impl={impl!r}: expected one of {IMPLS} or 'auto'")
  strided = _pair(strides) != (1, 1)
  if impl == "onednn":
    cls = onednn.ConvTranspose
  elif impl == "mixed" and strided:
    cls = functools.partial(SubpixelConvTranspose, mixed=True)
  elif impl == "subpixel" and strided:
    cls = SubpixelConvTranspose
  elif impl in ("matmul", "mixed"):
    cls = ConvTranspose
  else:
    cls = functools.partial(nn.ConvTranspose, padding="SAME")
  return cls(features, _pair(kernel_size), strides=_pair(strides), dtype=dtype, name=name)
