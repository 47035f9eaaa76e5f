"""dSprites generated from its definition (Matthey et al. 2017), no download.

The factor grid is the published one (`dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`): colour 1
(white), shape 3 (square, ellipse, heart; values 1, 2, 3), scale 6 (linspace(0.5, 1, 6)),
orientation 40 (linspace(0, 2 pi, 40)), position x and y 32 each (linspace(0, 1, 32)); 737,280
64x64 binary images, image i the i-th combination in C order over those sizes, as the file's
`latents_classes`. The pixels are this module's drawing of each shape (sampled at pixel centres),
not the file's: the shapes' outlines differ slightly; the factors, their values and the order do
not. `classes(indices)` and `values(classes)` give the file's two tables for any images;
`render(classes)` draws them; `factor_data()` is the sampler the disentanglement scores take.
"""

import numpy as np

from ae_jax import disentanglement

NAMES = ("color", "shape", "scale", "orientation", "posX", "posY")
SIZES = (1, 3, 6, 40, 32, 32)
NUM_IMAGES = int(np.prod(SIZES))  # 737,280
SIZE = 64
_VALUES = (np.ones(1), np.arange(1.0, 4.0), np.linspace(0.5, 1.0, 6), np.linspace(0.0, 2 * np.pi, 40),
           np.linspace(0.0, 1.0, 32), np.linspace(0.0, 1.0, 32))
# The drawing: a unit-scale shape spans about 2 x RADIUS pixels; centres sweep [MARGIN, SIZE - MARGIN].
RADIUS, MARGIN = 10.0, 12.0


def classes(indices) -> np.ndarray:
  """[n, 6] int factor classes of images `indices` (C order over SIZES)."""
  return np.stack(np.unravel_index(np.asarray(indices, np.int64), SIZES), axis=-1)


def values(classes_N6: np.ndarray) -> np.ndarray:
  """[n, 6] float factor values of those classes, as the file's `latents_values`."""
  return np.stack([_VALUES[k][classes_N6[:, k]] for k in range(len(SIZES))], axis=-1)


def _inside(shape_N: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Whether the shape-local points (u, v) (unit scale; v up) lie inside each example's shape."""
  square = (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)
  ellipse = u**2 + (v / 0.5) ** 2 <= 1.0
  x, y = 1.15 * u, 1.15 * v + 0.25  # the heart curve (x^2 + y^2 - 1)^3 <= x^2 y^3, scaled to about one unit
  heart = (x**2 + y**2 - 1.0) ** 3 - x**2 * y**3 <= 0.0
  s = shape_N[:, None, None]
  return np.where(s == 0, square, np.where(s == 1, ellipse, heart))


def render(classes_N6: np.ndarray) -> np.ndarray:
  """uint8 [n, 64, 64, 1] images (0 or 255) of the given factor classes."""
  c = np.asarray(classes_N6)
  vals = values(c)
  scale, angle = vals[:, 2], vals[:, 3]
  cx = MARGIN + vals[:, 4] * (SIZE - 2 * MARGIN)
  cy = MARGIN + vals[:, 5] * (SIZE - 2 * MARGIN)
  yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
  dx = (xx[None] - cx[:, None, None]) / (RADIUS * scale[:, None, None])
  dy = (yy[None] - cy[:, None, None]) / (RADIUS * scale[:, None, None])
  cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
  u, v = cos * dx + sin * dy, -(-sin * dx + cos * dy)  # rotate back by the angle; image y points down
  return (_inside(c[:, 1], u, v) * 255).astype(np.uint8)[..., None]


def images(indices) -> np.ndarray:
  """uint8 [n, 64, 64, 1] images `indices` of the 737,280."""
  return render(classes(indices))


def factor_data() -> disentanglement.FactorData:
  """The five varying factors (shape, scale, orientation, x, y) for the disentanglement scores:
  observations are the rendered images as floats in [0, 1]."""
  def observe(f_N5):
    full = np.concatenate([np.zeros((len(f_N5), 1), np.int64), f_N5], axis=1)
    return render(full).astype(np.float32) / 255.0
  return disentanglement.FactorData(SIZES[1:], observe)
