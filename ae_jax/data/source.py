"""What every data source gives: splits read by index, each checked once where it is made.

A split is random access: `len(split)`, `split[indices] -> images [n, H, W, C]`
(uint8 in [0, 255] or float32 in [0, 1], as stored; `transforms.to_float` makes
them float where they are used), `split.image_shape` and `split.labels` (int32
[N], or None). That is the shape grain's `MapDataset.source` and ArrayRecord
readers serve, and all the loop needs: which examples a step takes is decided
by the sampler from (seed, epoch), never by the source.
"""

from collections.abc import Callable
import copy
import dataclasses
import hashlib
from typing import TYPE_CHECKING

import ml_collections
import numpy as np

from ae_jax.fields import Field

if TYPE_CHECKING:
  from ae_jax.disentanglement import FactorData


class DataError(ValueError):
  """A data source that cannot be read as asked; the message is one line."""


class ArraySource:
  """One split held in memory as an array, read by index."""

  def __init__(self, images_NHWC: np.ndarray, labels_N: np.ndarray | None = None):
    self._images = images_NHWC
    self.labels = None if labels_N is None else np.asarray(labels_N, np.int32)
    self._fingerprint = None

  def __len__(self) -> int:
    return len(self._images)

  def __getitem__(self, index) -> np.ndarray:
    return self._images[index]

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(int(d) for d in self._images.shape[1:])

  @property
  def dtype(self) -> np.dtype:
    return self._images.dtype

  @property
  def has_labels(self) -> bool:
    return self.labels is not None

  @property
  def nbytes(self) -> int:
    return int(self._images.nbytes)

  def take(self, n: int) -> "ArraySource":
    """The first n examples."""
    return ArraySource(self._images[:n], None if self.labels is None else self.labels[:n])

  def fingerprint(self) -> str:
    """SHA-256 of the images and labels (computed once)."""
    if self._fingerprint is None:
      h = hashlib.sha256(str((self._images.dtype, self._images.shape)).encode())
      h.update(np.ascontiguousarray(self._images).tobytes())
      if self.labels is not None:
        h.update(np.ascontiguousarray(self.labels).tobytes())
      self._fingerprint = h.hexdigest()
    return self._fingerprint


def flat_indices(index, n: int) -> tuple[np.ndarray, tuple[int, ...]]:
  """(int64 indices, leading shape of the result) for an int, a slice or an integer array into n examples."""
  if isinstance(index, slice):
    flat = np.arange(*index.indices(n), dtype=np.int64)
    return flat, flat.shape
  arr = np.asarray(index)
  if arr.size == 0:
    arr = arr.astype(np.int64)  # [] is a float array to numpy
  if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
    raise TypeError(f"a split is indexed by integers or a slice, not {arr.dtype}")
  flat = arr.reshape(-1).astype(np.int64)
  flat = np.where(flat < 0, flat + n, flat)
  if flat.size and (flat.min() < 0 or flat.max() >= n):
    bad = int(flat.max() if flat.max() >= n else flat.min())
    raise IndexError(f"index {bad} out of range for {n} examples")
  return flat, arr.shape


class StreamSource:
  """One split read from disk by index, never held whole: a subclass reads uint8 images by
  `_read(indices) -> [n, H, W, C]` (records of one shard read together, pictures decoded in threads)."""

  dtype = np.dtype(np.uint8)
  labels: np.ndarray | None
  image_shape: tuple[int, int, int]

  def __init__(self, n: int, labels_N: np.ndarray | None, fingerprint: str):
    self._n, self._fingerprint = n, fingerprint
    self.labels = None if labels_N is None else np.asarray(labels_N, np.int32)[:n]

  def __len__(self) -> int:
    return self._n

  @property
  def has_labels(self) -> bool:
    return self.labels is not None

  def __getitem__(self, index) -> np.ndarray:
    flat, lead = flat_indices(index, self._n)
    if not len(flat):
      return np.zeros((*lead, *self.image_shape), np.uint8)
    return self._read(flat).reshape(*lead, *self.image_shape)

  def _read(self, flat: np.ndarray) -> np.ndarray:
    raise NotImplementedError

  def take(self, n: int) -> "StreamSource":
    """The first n examples (the same reader); all of them: this split, its fingerprint unchanged."""
    if n == self._n:
      return self
    part = copy.copy(self)
    part._n, part.labels = n, None if self.labels is None else self.labels[:n]
    part._fingerprint = hashlib.sha256(f"{self._fingerprint}[:{n}]".encode()).hexdigest()
    return part

  def fingerprint(self) -> str:
    """SHA-256 of the split's contents, taken when it was written or scanned (not re-read here)."""
    return self._fingerprint


def check_split(images: np.ndarray, labels, where: str, split: str) -> ArraySource:
  """A split's arrays as an ArraySource, after every check: rank, dtype, size, values, labels.

  Each problem is one line naming the source, the split and the bad value.
  """
  images = np.asarray(images)
  if images.ndim == 3:  # [N, H, W]: one channel
    images = images[..., None]
  if images.ndim != 4:
    raise DataError(f"{where}: {split} images of rank {images.ndim} {images.shape}, expected 4 (N, H, W, C)")
  if len(images) == 0:
    raise DataError(f"{where}: the {split} split has no images")
  if images.dtype != np.uint8:
    if not np.issubdtype(images.dtype, np.floating):
      raise DataError(f"{where}: {split} images of dtype {images.dtype}, expected uint8 or float in [0, 1]")
    images = images.astype(np.float32)
    finite = np.isfinite(images)
    if not finite.all():
      bad = int(np.argmin(finite.reshape(len(images), -1).all(axis=1)))
      raise DataError(f"{where}: {split} image {bad} has non-finite pixels "
                      f"({images[bad][~finite[bad]].flat[0]}); float images must be finite and in [0, 1]")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0.0 or hi > 1.0:
      scale = " (0-255 values? pass them as uint8)" if hi > 1.0 and hi <= 255.0 else ""
      raise DataError(f"{where}: {split} images range over [{lo:g}, {hi:g}]; float images must be finite "
                      f"and in [0, 1]{scale}")
  if labels is not None:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
      raise DataError(f"{where}: {split} labels of shape {labels.shape} and dtype {labels.dtype}, "
                      "expected one integer per image")
    if len(labels) != len(images):
      raise DataError(f"{where}: {len(images)} {split} images but {len(labels)} labels")
  return ArraySource(images, labels)


@dataclasses.dataclass(frozen=True)
class Dataset:
  """The train and test splits of one source, and where they came from."""

  train: ArraySource
  test: ArraySource
  source: str  # human-readable: where the splits came from
  factors: "FactorData | None" = None  # a source with known generative factors: their sampler

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return self.train.image_shape

  @property
  def labelled(self) -> bool:
    """Whether both splits have labels (the probes and the Fréchet classifier need them)."""
    return self.train.has_labels and self.test.has_labels

  def summary(self) -> dict:
    """What was used, for run.json: source, sizes, shape, dtype and a checksum of both splits."""
    digest = hashlib.sha256(f"{self.train.fingerprint()}{self.test.fingerprint()}".encode())
    return {
        "source": self.source,
        "num_train": len(self.train),
        "num_test": len(self.test),
        "image_shape": list(self.image_shape),
        "dtype": str(self.train.dtype),
        "labelled": self.labelled,
        **({"factors": list(self.factors.names)} if self.factors is not None else {}),
        "sha256": digest.hexdigest(),
    }


@dataclasses.dataclass(frozen=True)
class DataSource:
  """A data source by name (`data.source`): how to read its splits, and its own config fields.

  load(config.data) -> (train, test, where): the two splits (check_split makes
  them from arrays) and a human-readable origin for run.json; or (train, test,
  where, factors) for a source with known generative factors: a
  disentanglement.FactorData, which the final eval's disentanglement scores
  sample (factor classes -> images). It may use
  data.train_size / data.test_size to read only a prefix; `data.load` cuts and
  checks the sizes. needs_dir: what data.dir must name, if the source reads one.
  fields: its own config fields, under `data.` (load sees config.data alone).
  """

  load: Callable[[ml_collections.ConfigDict], tuple]
  fields: tuple[Field, ...] = ()
  needs_dir: str | None = None
  module: str = ""
