"""dSprites (Matthey et al. 2017) as a data source (`data.source='dsprites'`): generated from its
definition, no download, or read from the published file.

The factor grid is the published one (`dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`): colour 1
(white), shape 3 (square, ellipse, heart; values 1, 2, 3), scale 6 (linspace(0.5, 1, 6)),
orientation 40 (linspace(0, 2 pi, 40)), position x and y 32 each (linspace(0, 1, 32)); 737,280
64x64 binary images, image i the i-th combination in C order over those sizes, as the file's
`latents_classes`. The pixels are this module's drawing of each shape (sampled at pixel centres),
not the file's: the shapes' outlines differ slightly; the factors, their values and the order do
not. `classes(indices)` and `values(classes)` give the file's two tables for any images;
`render(classes)` draws them; `factor_data()` is the sampler the disentanglement scores take.

`data.dsprites_variant='colour'`: the same shapes in one of 4 colours (the `color`
factor, 4 classes in place of 1) on one of 4 background colours (a seventh factor,
`background`), 64x64x3: 11,796,480 images. With data.dir naming the published
`dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz` (or any file of its layout: `imgs`
[N, 64, 64] of 0/1, `latents_classes` the complete factor grid in C order,
`latents_values`), the images are the file's.

The splits: a fixed permutation (seed 0) of all images; its first TEST_SIZE (a tenth
of a smaller grid) form the test split, the rest the training split, in that shuffled order (so any
prefix is a random sample). Labels: the shape (0 square, 1 ellipse, 2 heart).
Images are drawn (or looked up) by index as a step asks for them, never held
whole; the split's `factors` are every factor's classes.
"""

import hashlib
import os
import zipfile

import numpy as np

from ae_jax import disentanglement, fields
from ae_jax.data.source import DataError, DataSource, StreamSource

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


def _inside(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Whether the shape-local points (u, v) (unit scale; v up) lie inside the shape."""
  if shape == 0:
    return (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)
  if shape == 1:
    return u**2 + (v / 0.5) ** 2 <= 1.0
  x, y = 1.15 * u, 1.15 * v + 0.25  # the heart curve (x^2 + y^2 - 1)^3 <= x^2 y^3, scaled to about one unit
  return (x**2 + y**2 - 1.0) ** 3 - x**2 * y**3 <= 0.0


CHUNK = 256  # images drawn together: larger arrays of float64 temporaries only run slower


def _mask(classes_N6: np.ndarray) -> np.ndarray:
  """bool [n, 64, 64]: the pixels inside each example's shape."""
  c = np.asarray(classes_N6)
  out = np.empty((len(c), SIZE, SIZE), bool)
  yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
  for shape in range(SIZES[1]):
    which = np.nonzero(c[:, 1] == shape)[0]
    for start in range(0, len(which), CHUNK):
      rows = which[start:start + CHUNK]
      vals = values(c[rows])
      scale, angle = vals[:, 2], vals[:, 3]
      cx = MARGIN + vals[:, 4] * (SIZE - 2 * MARGIN)
      cy = MARGIN + vals[:, 5] * (SIZE - 2 * MARGIN)
      dx = (xx[None] - cx[:, None, None]) / (RADIUS * scale[:, None, None])
      dy = (yy[None] - cy[:, None, None]) / (RADIUS * scale[:, None, None])
      cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
      u, v = cos * dx + sin * dy, -(-sin * dx + cos * dy)  # rotate back by the angle; image y points down
      out[rows] = _inside(shape, u, v)
  return out


def render(classes_N6: np.ndarray) -> np.ndarray:
  """uint8 [n, 64, 64, 1] images (0 or 255) of the given factor classes."""
  return (_mask(classes_N6) * 255).astype(np.uint8)[..., None]


def images(indices) -> np.ndarray:
  """uint8 [n, 64, 64, 1] images `indices` of the 737,280."""
  return render(classes(indices))


def factor_data() -> disentanglement.FactorData:
  """The five varying factors (shape, scale, orientation, x, y) for the disentanglement scores:
  observations are the rendered images as floats in [0, 1]."""
  return Grid("binary").factor_data()


VARIANTS = ("binary", "colour")
SHAPE_COLOURS = np.array([[255, 80, 80], [80, 220, 80], [90, 140, 255], [255, 230, 70]], np.uint8)
BACKGROUNDS = np.array([[0, 0, 0], [90, 90, 90], [20, 40, 100], [100, 50, 20]], np.uint8)
COLOUR_NAMES = (*NAMES, "background")
COLOUR_SIZES = (len(SHAPE_COLOURS), *SIZES[1:], len(BACKGROUNDS))
TEST_SIZE = 10_000
RENDER_VERSION = 1  # part of the generated splits' fingerprint: bump it when the drawing changes


def render_colour(classes_N7: np.ndarray) -> np.ndarray:
  """uint8 [n, 64, 64, 3]: each shape in its colour (factor 0) on its background (factor 6)."""
  c = np.asarray(classes_N7)
  inside = _mask(np.concatenate([np.zeros((len(c), 1), np.int64), c[:, 1:6]], axis=1))
  shape_colour, background = SHAPE_COLOURS[c[:, 0]][:, None, None], BACKGROUNDS[c[:, 6]][:, None, None]
  return np.where(inside[..., None], shape_colour, background)


class Grid:
  """The images of one complete factor grid in C order: generated (a variant), or a file's `imgs`."""

  def __init__(self, variant: str = "binary", imgs=None, sizes=None):
    self.variant, self._imgs = variant, imgs
    self.names = COLOUR_NAMES if variant == "colour" else NAMES
    self.sizes = tuple(sizes) if sizes is not None else (COLOUR_SIZES if variant == "colour" else SIZES)
    self.num_images = int(np.prod(self.sizes))
    self.image_shape = (SIZE, SIZE, 3 if variant == "colour" else 1)

  def classes(self, indices) -> np.ndarray:
    return np.stack(np.unravel_index(np.asarray(indices, np.int64), self.sizes), axis=-1)

  def images(self, indices) -> np.ndarray:
    """uint8 [n, 64, 64, C] images `indices` of the grid."""
    if self._imgs is not None:
      return (self._imgs[np.asarray(indices, np.int64)] * np.uint8(255))[..., None]
    c = self.classes(indices)
    return render_colour(c) if self.variant == "colour" else render(c)

  def factor_data(self) -> disentanglement.FactorData:
    """The varying factors (size > 1), observed as float images in [0, 1]."""
    varying = [k for k, n in enumerate(self.sizes) if n > 1]

    def observe(f_NK):
      full = np.zeros((len(f_NK), len(self.sizes)), np.int64)
      full[:, varying] = f_NK
      return self.images(np.ravel_multi_index(full.T, self.sizes)).astype(np.float32) / 255.0

    return disentanglement.FactorData(tuple(self.sizes[k] for k in varying), observe,
                                      tuple(self.names[k] for k in varying))


class GridSplit(StreamSource):
  """Some images of a Grid, by index: drawn (or looked up) as they are read."""

  def __init__(self, grid: Grid, indices: np.ndarray, fingerprint: str):
    self._grid, self._indices = grid, np.asarray(indices, np.int64)
    self.image_shape = grid.image_shape
    shape_stride = int(np.prod(grid.sizes[2:]))
    super().__init__(len(indices), (self._indices // shape_stride) % grid.sizes[1], fingerprint)

  @property
  def factors(self) -> np.ndarray:
    """[N, K] every factor's class of each example."""
    return self._grid.classes(self._indices[:len(self)])

  def _read(self, flat: np.ndarray) -> np.ndarray:
    return self._grid.images(self._indices[flat])


PUBLISHED = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"


def read_published(path: str) -> tuple[Grid, str]:
  """(the file's Grid, its SHA-256) after checking the published layout: `imgs` [N, 64, 64] of 0 and 1,
  `latents_classes` [N, 6] the complete grid of its factor sizes in C order, `latents_values` [N, 6]."""
  try:
    with np.load(path, allow_pickle=False) as f:
      missing = [k for k in ("imgs", "latents_classes", "latents_values") if k not in f.files]
      if missing:
        raise DataError(f"data.dir={path!r}: holds {sorted(f.files)}, not the dSprites layout "
                        f"(missing: {missing})")
      imgs, classes, values_ = f["imgs"], f["latents_classes"], f["latents_values"]
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    if isinstance(e, DataError):
      raise
    raise DataError(f"data.dir={path!r}: not a readable .npz file ({type(e).__name__}: {e})") from None
  n = len(imgs)
  if imgs.ndim != 3 or imgs.shape[1:] != (SIZE, SIZE) or not np.issubdtype(imgs.dtype, np.integer):
    raise DataError(f"data.dir={path!r}: imgs of shape {imgs.shape} and dtype {imgs.dtype}, expected "
                    f"[N, {SIZE}, {SIZE}] integers 0 or 1")
  if classes.shape != (n, len(SIZES)) or values_.shape != (n, len(SIZES)):
    raise DataError(f"data.dir={path!r}: {n} imgs but latents_classes {classes.shape} and latents_values "
                    f"{values_.shape}, expected [{n}, {len(SIZES)}] each")
  sizes = tuple(int(m) + 1 for m in classes.max(axis=0))
  grid = np.stack(np.unravel_index(np.arange(n), sizes), axis=-1) if np.prod(sizes) == n else None
  if grid is None or not np.array_equal(classes, grid):
    row = 0 if grid is None else int(np.argmax(np.any(classes != grid, axis=1)))
    raise DataError(f"data.dir={path!r}: latents_classes are not the complete grid of sizes {sizes} in C "
                    f"order (row {row}: {classes[row].tolist()})")
  if int(imgs.max()) > 1 or int(imgs.min()) < 0:
    raise DataError(f"data.dir={path!r}: imgs range over [{int(imgs.min())}, {int(imgs.max())}], "
                    "expected 0 or 1")
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      h.update(block)
  return Grid("binary", imgs.astype(np.uint8, copy=False), sizes), h.hexdigest()


FIELDS = (
    fields.Field("data.dsprites_variant", "binary", fields.one_of(*VARIANTS), fields.ALLOW,
                 "dsprites: `binary`, the published white shapes on black; `colour`, shapes in 4 colours "
                 "on 4 backgrounds (a seventh factor), 64x64x3"),
)


def _load(cfg):
  if cfg.dir:
    if cfg.dsprites_variant != "binary":
      raise DataError(f"data.dsprites_variant={cfg.dsprites_variant!r}: the published file is the binary "
                      f"variant; leave data.dir=None to generate the {cfg.dsprites_variant!r} one")
    grid, digest_ = read_published(cfg.dir)
    where = f"dsprites:{os.path.abspath(cfg.dir)}"
  else:
    grid, digest_ = Grid(cfg.dsprites_variant), f"generated-v{RENDER_VERSION}"
    where = f"dsprites:generated ({cfg.dsprites_variant}, {grid.num_images} images)"
  test_size = min(TEST_SIZE, grid.num_images // 10)
  if test_size == 0:
    raise DataError(f"{where}: {grid.num_images} images; too few for a test split")
  order = np.random.default_rng(0).permutation(grid.num_images)
  base = f"dsprites-{cfg.dsprites_variant}-{digest_}-{grid.sizes}"
  splits = [GridSplit(grid, part, hashlib.sha256(f"{base}-{name}".encode()).hexdigest())
            for part, name in ((order[test_size:], "train"), (order[:test_size], "test"))]
  return splits[0], splits[1], where, grid.factor_data()


SOURCE = DataSource(_load, fields=FIELDS, module=__name__)
