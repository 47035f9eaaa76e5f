"""A SAME transposed conv as one matmul + col2im, shared by layers.ConvTranspose and onednn."""

import jax
from jax import lax
import jax.numpy as jnp

from ae_jax.models import padding


def conv_transpose_same(x_BHWC: jax.Array, kernel_HWIO: jax.Array, strides: tuple[int, int]) -> jax.Array:
  """lax.conv_transpose(x, kernel, strides, 'SAME') (transpose_kernel=False), without the bias.

  One matmul gives every tap's contribution, then each tap is overlap-added at its
  strided output position.
  """
  (kh, kw, c_in, c_out), (sh, sw) = kernel_HWIO.shape, strides
  b, h, w, _ = x_BHWC.shape
  # lax.conv_transpose correlates the s-dilated, padded input with the kernel, so input
  # i reaches output y = s*i + pad_lo - t through tap t.
  h_lo, w_lo = padding.same_transpose_lo(kh, sh), padding.same_transpose_lo(kw, sw)
  h_out, w_out = h * sh, w * sw
  z = x_BHWC @ jnp.moveaxis(kernel_HWIO, 2, 0).reshape(c_in, kh * kw * c_out)
  z = z.reshape(b, h, w, kh, kw, c_out)
  y = None
  for i in range(kh):
    for j in range(kw):
      # Interior padding s-1 spreads the inputs s apart; negative edge padding crops.
      lo_h, lo_w = h_lo - i, w_lo - j
      placed = lax.pad(z[:, :, :, i, j, :], jnp.zeros((), z.dtype), (
          (0, 0, 0),
          (lo_h, h_out - (h - 1) * sh - 1 - lo_h, sh - 1),
          (lo_w, w_out - (w - 1) * sw - 1 - lo_w, sw - 1),
          (0, 0, 0)))
      y = placed if y is None else y + placed
  return y
