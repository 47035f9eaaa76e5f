"""lax's SAME padding, shared by the conv implementations of layers.py and onednn.py."""


def same_conv(size: int, k: int, s: int) -> tuple[int, int, int]:
  """(pad_lo, pad_hi, out) of lax's SAME padding for a strided convolution."""
  out = -(-size // s)
  total = max((out - 1) * s + k - size, 0)
  return total // 2, total - total // 2, out


def same_transpose_lo(k: int, s: int) -> int:
  """pad_lo of lax.conv_transpose's SAME padding on the stride-dilated input."""
  return k - 1 if s > k - 1 else -(-(k + s - 2) // 2)
