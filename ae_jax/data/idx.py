"""The four MNIST-format IDX files in a folder (MNIST, Fashion-MNIST, KMNIST), gzipped or not."""

import gzip
import os
import zlib

import numpy as np

from ae_jax.data.source import DataError, DataSource, check_split

FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


def _read_bytes(path: str) -> bytes:
  try:
    with open(path, "rb") as f:
      raw = f.read()
    if raw[:2] == b"\x1f\x8b":
      return gzip.decompress(raw)
    return raw
  except (OSError, EOFError, zlib.error) as e:
    # gzip.BadGzipFile is an OSError; a truncated stream raises EOFError.
    raise DataError(f"{path}: cannot read ({type(e).__name__}: {e})") from None


def read_idx(path: str, expected_ndim: int) -> np.ndarray:
  """Reads one IDX file of unsigned bytes (gzipped or not), validating its header and size."""
  raw = _read_bytes(path)
  if len(raw) < 4:
    raise DataError(f"{path}: {len(raw)} bytes is too short for an IDX header")
  zero0, zero1, dtype_code, ndim = raw[:4]
  if zero0 or zero1 or dtype_code != 0x08 or ndim != expected_ndim:
    raise DataError(
        f"{path}: bad IDX magic {raw[:4].hex()} (expected 000008{expected_ndim:02x}: "
        f"unsigned bytes, {expected_ndim} dimensions)")
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataError(f"{path}: truncated header ({len(raw)} bytes, need {header})")
  dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  size = int(np.prod(dims))
  if len(raw) - header != size:
    raise DataError(
        f"{path}: header says dims {dims} = {size} bytes of data but the file holds "
        f"{len(raw) - header}")
  return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _path(directory: str, split: str, what: str) -> str:
  name = FILES[(split, what)]
  for candidate in (name + ".gz", name):
    path = os.path.join(directory, candidate)
    if os.path.exists(path):
      return path
  raise DataError(f"{directory}: missing {name}[.gz] (need the four standard MNIST-format IDX files)")


def load_idx(directory: str) -> tuple[np.ndarray, ...]:
  """(train_x, train_y, test_x, test_y) as uint8 from the four MNIST-format IDX files."""
  if not os.path.isdir(directory):
    raise DataError(f"data.dir={directory!r}: not a directory")
  out = []
  for split in ("train", "test"):
    img_path, lbl_path = _path(directory, split, "images"), _path(directory, split, "labels")
    images, labels = read_idx(img_path, 3), read_idx(lbl_path, 1)
    if len(images) != len(labels):
      raise DataError(f"{img_path}: {len(images)} images but {lbl_path} has {len(labels)} labels")
    out += [images[..., None], labels]
  if out[0].shape[1:] != out[2].shape[1:]:
    raise DataError(f"{directory}: train images {out[0].shape[1:]} and test images "
                    f"{out[2].shape[1:]} differ in shape")
  return tuple(out)


def write_idx(path: str, array: np.ndarray) -> None:
  """Writes a uint8 array as an IDX file, gzipped when the path ends in .gz."""
  array = np.asarray(array, np.uint8)
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
  payload = header + array.tobytes()
  if path.endswith(".gz"):
    payload = gzip.compress(payload, mtime=0)
  with open(path, "wb") as f:
    f.write(payload)


def _load(cfg):
  train_x, train_y, test_x, test_y = load_idx(cfg.dir)
  where = f"idx:{os.path.abspath(cfg.dir)}"
  return check_split(train_x, train_y, where, "train"), check_split(test_x, test_y, where, "test"), where


SOURCE = DataSource(_load, needs_dir="the folder holding the four IDX files", module=__name__)
