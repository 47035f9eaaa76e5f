"""Data sources by name (`data.source`), the sampler, and the transforms the step applies.

`load(config.data)` reads the source the config names (never another one) into a
`Dataset` of two splits read by index. A source is a `DataSource` record in
SOURCES; `register(name, DataSource(...))` adds your own (docs/extending.md).
"""

import os

import ml_collections

from ae_jax import fields
from ae_jax.data import dsprites, embedded, folder, idx, npz, records, tfds
from ae_jax.data.cache import cache_dir, digest, read_cache, write_cache
from ae_jax.data.embedded import load_embedded
from ae_jax.data.idx import load_idx, read_idx, write_idx
from ae_jax.data.npz import load_npz
from ae_jax.data.prefetch import prefetch
from ae_jax.data.records import write_array_record
from ae_jax.data.sampler import Call, Schedule, epoch_order, padded_batches
from ae_jax.data.source import ArraySource, DataError, Dataset, DataSource, StreamSource, check_split
from ae_jax.data.tfds import write_tfds
from ae_jax.data.transforms import to_float

SOURCES: dict[str, DataSource] = {"tfds": tfds.SOURCE, "idx": idx.SOURCE, "npz": npz.SOURCE,
                                  "embedded": embedded.SOURCE, "folder": folder.SOURCE,
                                  "array_record": records.SOURCE, "dsprites": dsprites.SOURCE}

FIELDS = (
    fields.Field("data.source", "tfds", fields.one_of_keys(SOURCES, "one"), fields.ALLOW,
                 "`tfds`, `idx` (four MNIST-format files in data.dir), `npz` (your arrays: data.dir is a "
                 ".npz file or a folder of .npy files), `embedded` (5,000 digits, offline), `folder` (your "
                 "pictures), `array_record` (shards of data.write_array_record), `dsprites` (generated, or "
                 "the published .npz in data.dir; with its factors), or one you registered (docs/data.md)"),
    fields.Field("data.dir", None, fields.optional(fields.TEXT), fields.FREE,
                 "the folder or file the source reads (tfds: the TFDS data_dir; None: TFDS's default)", str),
    fields.Field("data.train_size", None, fields.optional(fields.POSITIVE), fields.ALLOW,
                 "first N training examples; None: all", int),
    fields.Field("data.test_size", None, fields.optional(fields.POSITIVE), fields.ALLOW,
                 "first N test examples; None: all", int),
)


DEVICE_TABLE_BYTES = 4 << 30  # data_on_device=None: a training split up to this goes to the devices


def on_device(choice: bool | None, split) -> bool:
  """Whether the training split goes to the devices whole (config.data_on_device): the choice, or when
  None, whether the split is in memory and at most DEVICE_TABLE_BYTES and a quarter of a device's memory."""
  if choice is not None:
    return choice
  if not isinstance(split, ArraySource):
    return False  # streamed from disk
  import jax  # pylint: disable=g-import-not-at-top

  stats = jax.local_devices()[0].memory_stats() or {}
  return split.nbytes <= min(DEVICE_TABLE_BYTES, stats.get("bytes_limit", DEVICE_TABLE_BYTES * 4) // 4)


def register(name: str, source: DataSource) -> DataSource:
  """Adds a data source under `name` (`data.source=name`); its fields join the config."""
  return fields.register(SOURCES, name, source, "data source", section="data")


def get(name: str) -> DataSource:
  return fields.lookup(SOURCES, name, "data.source")


def check(cfg: ml_collections.ConfigDict) -> None:
  """What the source needs from config.data beyond each field's own check (a data.dir)."""
  needs = get(cfg.source).needs_dir
  if needs and not cfg.dir:
    raise ValueError(f"data.dir=None: data.source={cfg.source!r} needs {needs}")


def load(cfg: ml_collections.ConfigDict) -> Dataset:
  """Reads `config.data` exactly as named; never falls back to another source.

  Every split is checked whole (check_split) before data.train_size/test_size
  cut it, so a bad array is found whatever prefix is asked for.
  """
  cfg = ml_collections.ConfigDict(cfg.to_dict())  # a copy, with ~ in data.dir expanded
  if cfg.dir:
    cfg.dir = os.path.expanduser(cfg.dir)
  check(cfg)
  train, test, where, *factors = get(cfg.source).load(cfg)
  for split, size in (("train", cfg.train_size), ("test", cfg.test_size)):
    if size is None:
      continue
    available = len(train if split == "train" else test)
    if not 0 < size <= available:
      raise DataError(f"data.{split}_size={size}: must be in [1, {available}] for {where}")
  train = train if cfg.train_size is None else train.take(cfg.train_size)
  test = test if cfg.test_size is None else test.take(cfg.test_size)
  if train.image_shape != test.image_shape:
    raise DataError(f"{where}: train images {train.image_shape} and test images {test.image_shape} "
                    "differ in shape")
  return Dataset(train, test, where, factors[0] if factors else None)


__all__ = [
    "ArraySource", "Call", "DEVICE_TABLE_BYTES", "DataError", "DataSource", "Dataset", "FIELDS", "SOURCES",
    "Schedule", "StreamSource", "cache_dir", "check", "check_split", "digest", "epoch_order", "get", "load",
    "load_embedded", "load_idx", "load_npz", "on_device", "padded_batches", "prefetch", "read_cache",
    "read_idx", "register", "to_float", "write_array_record", "write_cache", "write_idx", "write_tfds",
]
