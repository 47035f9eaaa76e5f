"""ArrayRecord shards (`data.source=array_record`): each image one raw uint8 record, read by index.

`write_array_record(DIR, data)` writes a dataset once (arrays, or any Dataset:
a folder of pictures is decoded here, once); training then reads only the
records each step takes, through grain's ArrayRecordDataSource, so a split is
never held whole in memory. DIR holds `train-00000-of-00004.array_record`, ...,
`test-...`, the labels as `{split}_labels.npy` and `ae_jax_records.json` (shape,
counts and a SHA-256 per split, written last: a folder without it is not a
finished dataset).
"""

import hashlib
import json
import os

import numpy as np

from ae_jax import faults, metrics
from ae_jax.data.source import DataError, Dataset, DataSource, StreamSource, check_split

META = "ae_jax_records.json"
FORMAT = 1
SHARD_BYTES = 256 << 20  # about 256 MB per shard
CHUNK = 1024  # examples read from the input per write


class RecordSplit(StreamSource):
  """One split of an ArrayRecord dataset written by write_array_record."""

  def __init__(self, directory: str, split: str, meta: dict):
    from grain import sources  # pylint: disable=g-import-not-at-top

    info = meta.get("splits", {}).get(split)
    if not isinstance(info, dict) or not {"num", "shards", "sha256"} <= set(info):
      raise DataError(f"{os.path.join(directory, META)}: no complete record of the {split} split")
    self.image_shape = tuple(meta["image_shape"])
    self._bytes = int(np.prod(self.image_shape))
    paths = [os.path.join(directory, f) for f in info["shards"]]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
      raise DataError(f"{missing[0]}: missing ({len(missing)} of the {split} split's {len(paths)} shards)")
    try:
      self._records = sources.ArrayRecordDataSource(paths)
    except Exception as e:  # pylint: disable=broad-except  # array_record raises bare RuntimeErrors
      raise DataError(f"{directory}: cannot open the {split} shards ({faults.first_line(e, 200)})") from None
    if len(self._records) != info["num"]:
      raise DataError(f"{directory}: the {split} shards hold {len(self._records)} records, "
                      f"{META} says {info['num']}")
    labels = None
    if meta["labelled"]:
      path = os.path.join(directory, f"{split}_labels.npy")
      try:
        labels = np.load(path, allow_pickle=False)
      except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the {split} labels ({faults.first_line(e, 200)})") from None
      if labels.shape != (info["num"],):
        raise DataError(f"{directory}/{split}_labels.npy: {labels.shape[0]} labels for {info['num']} images")
    super().__init__(info["num"], labels, info["sha256"])
    self._where = f"{directory} ({split})"

  def _read(self, flat: np.ndarray) -> np.ndarray:
    raw = self._records.__getitems__(flat.tolist())  # grouped by shard, read in parallel
    bad = next((i for i, r in zip(flat, raw) if len(r) != self._bytes), None)
    if bad is not None:
      raise DataError(f"{self._where}: record {bad} has {len(raw[list(flat).index(bad)])} bytes, "
                      f"expected {self._bytes} for images of shape {self.image_shape}")
    return np.frombuffer(b"".join(raw), np.uint8).reshape(len(flat), *self.image_shape)


def read_meta(directory: str) -> dict:
  path = os.path.join(directory, META)
  if not os.path.isdir(directory):
    raise DataError(f"data.dir={directory!r}: no such folder of ArrayRecord shards")
  try:
    with open(path) as f:
      meta = json.load(f)
  except FileNotFoundError:
    raise DataError(f"data.dir={directory!r}: no {META} (write the shards with "
                    "ae_jax.data.write_array_record; an unfinished write leaves none)") from None
  except (OSError, json.JSONDecodeError) as e:
    raise DataError(f"{path}: cannot read ({faults.first_line(e, 200)})") from None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT or "image_shape" not in meta:
    got = meta.get("format") if isinstance(meta, dict) else None
    raise DataError(f"{path}: format {got!r} or no image_shape; this ae_jax reads format {FORMAT}")
  return meta


def _load(cfg):
  directory = os.path.abspath(cfg.dir)
  meta = read_meta(directory)
  where = f"array_record:{directory}"
  return RecordSplit(directory, "train", meta), RecordSplit(directory, "test", meta), where


SOURCE = DataSource(_load, needs_dir="a folder written by ae_jax.data.write_array_record", module=__name__)


def _write_split(directory: str, split: str, part, per_shard: int, labelled: bool) -> dict:
  """One split's shards (and labels), read from `part` in chunks: its entry in the metadata."""
  from array_record.python.array_record_module import ArrayRecordWriter  # pylint: disable=g-import-not-at-top

  n, shape = len(part), part.image_shape
  shards = -(-n // per_shard)
  names = [f"{split}-{s:05d}-of-{shards:05d}.array_record" for s in range(shards)]
  # The same digest ArraySource.fingerprint gives these arrays: a run may move from one to the other.
  digest = hashlib.sha256(str((np.dtype(np.uint8), (n, *shape))).encode())
  for s, name in enumerate(names):
    writer = ArrayRecordWriter(os.path.join(directory, name), "group_size:1")  # random access
    try:
      for start in range(s * per_shard, min(n, (s + 1) * per_shard), CHUNK):
        images = np.ascontiguousarray(part[start:min(start + CHUNK, n, (s + 1) * per_shard)])
        digest.update(images.tobytes())
        for image in images:
          writer.write(image.tobytes())
    finally:
      writer.close()
  if labelled:
    np.save(os.path.join(directory, f"{split}_labels.npy"), part.labels.astype(np.int32))
    digest.update(np.ascontiguousarray(part.labels.astype(np.int32)).tobytes())
  return {"num": n, "shards": names, "sha256": digest.hexdigest()}


def write_array_record(directory: str, data, shard_bytes: int = SHARD_BYTES) -> str:
  """Writes the train and test splits of `data` as ArrayRecord shards in `directory` (a new folder).

  data: a Dataset (e.g. `data.load` of a folder of pictures, read in chunks) or
  uint8 arrays (train_x, train_y, test_x, test_y), labels None or integers.
  Returns the folder; `data.source=array_record` with `data.dir` at it reads it.
  """
  if isinstance(data, Dataset):
    splits = {"train": data.train, "test": data.test}
  else:
    train_x, train_y, test_x, test_y = data
    splits = {"train": check_split(train_x, train_y, "write_array_record", "train"),
              "test": check_split(test_x, test_y, "write_array_record", "test")}
  shape = splits["train"].image_shape
  for split, part in splits.items():
    if part.dtype != np.uint8:
      raise DataError(f"write_array_record: {split} images are {part.dtype}; records hold uint8 "
                      "(multiply [0, 1] floats by 255 and round)")
    if part.image_shape != shape:
      raise DataError(f"write_array_record: train images {shape} and test images {part.image_shape} "
                      "differ in shape")
  if os.path.exists(os.path.join(directory, META)):
    raise DataError(f"{directory}: already holds an ArrayRecord dataset; write to a new folder")
  os.makedirs(directory, exist_ok=True)
  labelled = all(part.labels is not None for part in splits.values())
  meta = {"format": FORMAT, "image_shape": list(shape), "labelled": labelled, "splits": {}}
  per_shard = max(1, shard_bytes // int(np.prod(shape)))
  for split, part in splits.items():
    meta["splits"][split] = _write_split(directory, split, part, per_shard, labelled)
  metrics.write_json(os.path.join(directory, META), meta)  # whole or not at all, last
  return directory
