"""Prepared TFDS datasets, read without TensorFlow; `write_tfds` prepares your own arrays as one."""

import concurrent.futures
import hashlib
import os
import socket

import numpy as np

from ae_jax import fields
from ae_jax.data import cache, folder
from ae_jax.data.source import DataError, DataSource, StreamSource, check_split

PREPARE_INSTALL = "pip install 'ae_jax[tfds-prepare]'"
OFFLINE_HINT = "without network, use data.source='idx' with data.dir, or data.source='embedded'"

FIELDS = (
    fields.Field("data.name", "mnist", fields.TEXT, fields.ALLOW, "tfds: the TFDS dataset name"),
    fields.Field("data.download", True, fields.BOOL, fields.FREE,
                 "tfds: download and prepare when not prepared"),
    fields.Field("data.stream", None, fields.optional(fields.BOOL), fields.ALLOW,
                 "tfds: True reads the examples a step takes from the prepared files (decoded in "
                 "data.workers threads); False decodes the split into memory once and caches it; None: "
                 "streams a split whose images exceed 4 GiB", bool),
)
STREAM_BYTES = 4 << 30  # data.stream=None: a split larger than this (as uint8) is streamed


class TfdsSplit(StreamSource):
  """A prepared TFDS split read by index (tfds data_source over its array_record files), its images
  decoded in threads when read. The fingerprint is the prepared copy's: its dataset_info.json and the
  split asked for (hashing every image would read the whole split)."""

  def __init__(self, builder, split: str, size: int | None, workers: int):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    spec = split if size is None else f"{split}[:{size}]"
    self.image_shape = _image_shape(builder)
    self._source = builder.as_data_source(split=spec, decoders={"image": tfds.decode.SkipDecoding()})
    with open(os.path.join(os.fspath(builder.data_dir), "dataset_info.json"), "rb") as f:
      stamp = hashlib.sha256(f.read() + spec.encode()).hexdigest()
    super().__init__(len(self._source), None, stamp)
    self._labelled = "label" in builder.info.features
    self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="ae_jax_decode")
    self._labels = None

  @property
  def labels(self):
    """Read on first use (the probes and the Fréchet classifier), without decoding an image."""
    if self._labelled and self._labels is None:
      self._labels = np.asarray([int(e["label"]) for e in _examples(self._source, 4096)], np.int32)
    return None if self._labels is None else self._labels[:self._n]

  @labels.setter
  def labels(self, value):  # StreamSource's own assignments; the labels come from the files
    del value

  @property
  def has_labels(self) -> bool:
    return self._labelled

  def _read(self, flat: np.ndarray) -> np.ndarray:
    examples = self._source.__getitems__(flat.tolist())
    c = self.image_shape[-1]
    return np.stack(list(self._pool.map(lambda e: folder.decode(e["image"], c, None), examples)))


def _image_shape(builder) -> tuple[int, int, int]:
  if "image" not in builder.info.features:
    raise DataError(f"TFDS dataset {builder.name!r}: expected examples with an 'image' feature")
  shape = tuple(builder.info.features["image"].shape)
  if len(shape) != 3 or None in shape:
    raise DataError(f"TFDS dataset {builder.name!r}: images of shape {shape} vary in size; decode them into "
                    "a folder and use data.source='folder' with data.image_size")
  return shape


def _online(host: str = "storage.googleapis.com", port: int = 443, timeout_s: float = 3.0) -> bool:
  """Whether TFDS's download host answers; behind a proxy, assume yes (TFDS goes through it)."""
  if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
    return True
  try:
    socket.create_connection((host, port), timeout=timeout_s).close()
    return True
  except OSError:
    return False


def _cache_path(builder, split: str, size: int | None) -> str:
  """Where the decoded arrays of one split go: keyed by dataset, version, split, size and prepared copy."""
  # The prepared copy's folder and when it was written: a dataset prepared anew gets a new entry.
  info = os.path.join(os.fspath(builder.data_dir), "dataset_info.json")
  stamp = f"{os.path.abspath(os.fspath(builder.data_dir))}@{os.path.getmtime(info)}"
  where = hashlib.sha256(stamp.encode()).hexdigest()[:12]
  name = builder.info.full_name.replace("/", "_")
  prefix = "all" if size is None else size
  return os.path.join(cache.cache_dir(), "tfds", f"{name}-{where}-{split}-{prefix}.npz")


def _examples(source, batch: int = 1024):
  """Every example of a TFDS data source, read `batch` at a time."""
  for start in range(0, len(source), batch):
    yield from source.__getitems__(list(range(start, min(start + batch, len(source)))))


def _check_size(builder, split: str, size: int | None) -> None:
  available = builder.info.splits[split].num_examples
  if size is not None and size > available:
    raise DataError(f"data.{split}_size={size}: must be in [1, {available}] for tfds:{builder.name}")


def _read_split(builder, split: str, size: int | None):
  """(images, labels or None) of the first `size` examples of a prepared split, decoded once and cached."""
  path = _cache_path(builder, split, size)
  cached = cache.read_cache(path)
  if cached is not None:
    return cached["images"], cached.get("labels")
  _check_size(builder, split, size)
  source = builder.as_data_source(split=split if size is None else f"{split}[:{size}]")
  examples = list(_examples(source))
  if not examples or "image" not in examples[0]:
    raise DataError(f"TFDS dataset {builder.name!r}: expected examples with an 'image' feature")
  arrays = {"images": np.stack([np.asarray(e["image"]) for e in examples])}
  if "label" in examples[0]:
    arrays["labels"] = np.asarray([int(e["label"]) for e in examples], np.int64)
  cache.write_cache(path, arrays)
  return arrays["images"], arrays.get("labels")


def _builder(name: str, data_dir: str | None, download: bool):
  """A prepared builder: downloaded first (download=True) only if the network answers, so that
  offline the error comes at once instead of after minutes of retries."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(f"data.name={name!r}: no such TFDS dataset") from None
  if builder.is_prepared():
    return builder
  if not download:
    raise DataError(f"TFDS dataset {name!r} is not prepared in {builder.data_dir} and "
                    f"data.download=False; {OFFLINE_HINT}")
  if not _online():
    raise DataError(f"TFDS could not load {name!r}: not prepared in {builder.data_dir} and no network "
                    f"to download it; {OFFLINE_HINT}")
  try:
    builder.download_and_prepare()
  except ModuleNotFoundError as e:
    if "tensorflow" in str(e):
      raise DataError(f"preparing TFDS dataset {name!r} needs TensorFlow: {PREPARE_INSTALL}") from None
    raise
  except Exception as e:  # download/prepare failures: network, disk, ...
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    raise DataError(f"TFDS could not load {name!r} ({type(e).__name__}: {first}); {OFFLINE_HINT}") from None
  return builder


def _load(cfg):
  """The train and test splits: streamed, or decoded (only the first train_size/test_size examples)."""
  builder = _builder(cfg.name, cfg.dir, cfg.download)
  where = f"tfds:{cfg.name}" + (f"@{cfg.dir}" if cfg.dir else "")
  stream = cfg.stream
  if stream is None:
    size = cfg.train_size or builder.info.splits["train"].num_examples
    stream = size * int(np.prod(_image_shape(builder))) > STREAM_BYTES
  if stream:
    for split, size in (("train", cfg.train_size), ("test", cfg.test_size)):
      _check_size(builder, split, size)
    return (TfdsSplit(builder, "train", cfg.train_size, cfg.workers),
            TfdsSplit(builder, "test", cfg.test_size, cfg.workers), where + " (streamed)")
  return (check_split(*_read_split(builder, "train", cfg.train_size), where, "train"),
          check_split(*_read_split(builder, "test", cfg.test_size), where, "test"), where)


SOURCE = DataSource(_load, fields=FIELDS, module=__name__)


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
