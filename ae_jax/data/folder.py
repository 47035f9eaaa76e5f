"""A folder of pictures (`data.source=folder`): PNG, JPEG, BMP, GIF or WebP files, decoded in threads.

Splits: `DIR/train/` and `DIR/test/` when there is a `test/` subfolder; else
every picture, with a test split of the files whose path hashes below
`data.test_fraction` (a fixed rule: adding files never moves the others).
Labels: one subfolder per class (sorted names are classes 0, 1, ...), else
none. A split's files are in an order fixed by a hash of their paths, so that
`data.train_size` takes a sample of every class. Each picture becomes
`data.channels` channels (1: grey, 3: RGB) and, with `data.image_size`, is
resized so its shorter side is that size and centre-cropped square (the CelebA-64
recipe). Every file is read and decoded once before training
(its SHA-256 feeds the split's fingerprint; later starts skip the files whose
size and mtime are unchanged); an unreadable one is one line naming it, or
skipped and counted with `data.skip_bad`.
"""

import concurrent.futures
import hashlib
import io
import os

from absl import logging
import numpy as np

from ae_jax import faults, fields
from ae_jax.data import cache
from ae_jax.data.source import DataError, DataSource, StreamSource

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")

FIELDS = (
    fields.Field("data.image_size", None, fields.optional(fields.POSITIVE), fields.ALLOW,
                 "folder: resize the shorter side to this and centre-crop square; None: as stored (all "
                 "pictures one size)", int),
    fields.Field("data.channels", None, fields.optional(fields.one_of(1, 3)), fields.ALLOW,
                 "folder: 1 (grey) or 3 (RGB); None: from the first picture", int),
    fields.Field("data.test_fraction", 0.1, fields.OPEN_FRACTION, fields.ALLOW,
                 "folder without a test/ subfolder: the fraction of files (by a hash of their path) "
                 "held out as the test split"),
    fields.Field("data.workers", 4, fields.POSITIVE, fields.FREE,
                 "folder and streamed tfds: threads decoding pictures (and checking a folder's at the "
                 "start)"),
    fields.Field("data.skip_bad", False, fields.BOOL, fields.ALLOW,
                 "folder: skip unreadable pictures (counted in the log and run.json) instead of stopping"),
)


def _pictures(root: str) -> list[str]:
  """Paths of the pictures under root, relative to it, sorted."""
  return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files
                if f.lower().endswith(EXTENSIONS))


def _hashed_test(path: str, fraction: float) -> bool:
  h = int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "little")
  return h / 2**64 < fraction


def decode(raw: bytes, channels: int, image_size: int | None) -> np.ndarray:
  """One picture's bytes -> uint8 [H, W, channels], resized (shorter side) and centre-cropped if asked."""
  import PIL.Image  # pylint: disable=g-import-not-at-top

  with PIL.Image.open(io.BytesIO(raw)) as im:
    im = im.convert("L" if channels == 1 else "RGB")
    if image_size is not None:
      w, h = im.size
      scale = image_size / min(w, h)
      size = (max(image_size, round(w * scale)), max(image_size, round(h * scale)))
      if size != im.size:
        im = im.resize(size, PIL.Image.Resampling.BICUBIC)
      left, top = (size[0] - image_size) // 2, (size[1] - image_size) // 2
      im = im.crop((left, top, left + image_size, top + image_size))
    x = np.asarray(im, np.uint8)
  return x[..., None] if x.ndim == 2 else x


class FolderSplit(StreamSource):
  """One split of a folder of pictures: the files, their labels, decoded when read."""

  def __init__(self, root: str, files: list[str], labels, channels: int, image_size, shape, workers: int,
               fingerprint: str):
    super().__init__(len(files), labels, fingerprint)
    self.root, self.files, self.channels, self.size = root, files, channels, image_size
    self.image_shape = shape
    self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="ae_jax_decode")

  def _decode(self, i: int) -> np.ndarray:
    path = os.path.join(self.root, self.files[i])
    try:
      with open(path, "rb") as f:
        x = decode(f.read(), self.channels, self.size)
    except (OSError, ValueError, SyntaxError) as e:
      if faults.describe(e):  # the machine's fault (I/O, a vanished filesystem): faults says it
        raise
      raise DataError(f"{path}: not a readable picture any more ({type(e).__name__}: {str(e)[:120]}); it "
                      "read at the start: was it changed during the run?") from None
    if x.shape != self.image_shape:
      raise DataError(f"{path}: a picture of {x.shape[1]}x{x.shape[0]}, the others are "
                      f"{self.image_shape[1]}x{self.image_shape[0]}; set data.image_size")
    return x

  def _read(self, flat: np.ndarray) -> np.ndarray:
    return np.stack(list(self._pool.map(self._decode, flat.tolist())))


def _inspect(root: str, rel: str) -> tuple[str, str, tuple[int, int], str]:
  """(rel, SHA-256 of the bytes, (width, height), mode) of one picture, decoded once to be sure it
  reads (a truncated JPEG passes every header check); DataError if it does not."""
  import PIL.Image  # pylint: disable=g-import-not-at-top

  path = os.path.join(root, rel)
  try:
    with open(path, "rb") as f:
      raw = f.read()
    with PIL.Image.open(io.BytesIO(raw)) as im:
      im.load()
      size, mode = im.size, im.mode
  except (OSError, ValueError, SyntaxError) as e:  # PIL.UnidentifiedImageError is an OSError
    raise DataError(f"{path}: not a readable picture ({type(e).__name__}: {str(e)[:120]})") from None
  return rel, hashlib.sha256(raw).hexdigest(), size, mode


SCAN_CHUNK = 4096  # files checked per batch of threads: memory stays flat however many there are


class _Checked:
  """What the last start learned of a folder's files, cached (under $AE_JAX_CACHE/folders) by path,
  size and modification time: a file that kept both is not decoded again (as make and rsync judge
  a file unchanged). Sorted numpy arrays of bytes and integers, so 500k files cost tens of MB."""

  FIELDS = ("rel", "size", "mtime", "digest", "width", "height", "mode")

  def __init__(self, root: str, split: str):
    key = hashlib.sha256(f"{os.path.realpath(root)}\0{split}".encode()).hexdigest()[:24]
    self.path = os.path.join(cache.cache_dir(), "folders", f"{key}.npz")
    old = cache.read_cache(self.path) or {}
    self.old = old if set(self.FIELDS) <= set(old) else {f: np.zeros((0, 32) if f == "digest" else 0)
                                                          for f in self.FIELDS}
    self.chunks, self.pending = [], []  # arrays of the checked chunks; the current chunk's rows

  def lookup(self, rels: list[str], stats: list) -> list:
    """Per file, (rel, digest, (width, height), mode) if it is as it was, else None."""
    old, out = self.old, []
    keys = np.array([r.encode() for r in rels])
    at = np.searchsorted(old["rel"], keys) if len(old["rel"]) else np.zeros(len(rels), int)
    for rel, key, i, st in zip(rels, keys, at, stats):
      hit = (st is not None and i < len(old["rel"]) and old["rel"][i] == key
             and old["size"][i] == st.st_size and old["mtime"][i] == st.st_mtime_ns)
      out.append((rel, old["digest"][i].tobytes().hex(), (int(old["width"][i]), int(old["height"][i])),
                  bytes(old["mode"][i]).decode()) if hit else None)
    return out

  def add(self, result, st) -> None:
    rel, digest, (width, height), mode = result
    self.pending.append((rel.encode(), st.st_size, st.st_mtime_ns, bytes.fromhex(digest), width, height,
                         mode.encode()))

  def end_chunk(self) -> None:
    if self.pending:
      columns = dict(zip(self.FIELDS, zip(*self.pending)))
      arrays = {f: np.asarray(c) for f, c in columns.items() if f != "digest"}
      # [n, 32] uint8: numpy's bytes arrays drop trailing zero bytes, which a digest may end with
      arrays["digest"] = np.frombuffer(b"".join(columns["digest"]), np.uint8).reshape(-1, 32)
      self.chunks.append(arrays)
      self.pending = []

  def save(self) -> None:
    self.end_chunk()
    if not self.chunks:
      return
    arrays = {f: np.concatenate([c[f] for c in self.chunks]) for f in self.FIELDS}
    order = np.argsort(arrays["rel"], kind="stable")
    try:
      cache.write_cache(self.path, {f: a[order] for f, a in arrays.items()})
    except OSError as e:  # a cache that cannot be written costs the next start time, not this run
      logging.warning("could not cache the checks of %s's files in %s: %s", self.path, cache.cache_dir(), e)


def _stat(path: str):
  try:
    return os.stat(path)
  except OSError:
    return None  # _inspect says what is wrong with it


def _scan(root: str, rels: list[str], cfg, split: str):
  """Checks a split's pictures in threads, a chunk at a time, skipping the files the last start
  checked and that kept their size and mtime: (the readable files, a SHA-256 of their names and
  contents, the first one's ((width, height), mode), the first of another size as (file, size) or
  None, how many were skipped)."""
  kept, digest, first, other, bad = [], hashlib.sha256(), None, None, []
  checked = _Checked(root, split)
  with concurrent.futures.ThreadPoolExecutor(cfg.workers) as pool:
    for start in range(0, len(rels), SCAN_CHUNK):
      chunk = rels[start:start + SCAN_CHUNK]
      stats = list(pool.map(_stat, [os.path.join(root, rel) for rel in chunk]))
      futures = [known if known else pool.submit(_inspect, root, rel)
                 for rel, known in zip(chunk, checked.lookup(chunk, stats))]
      for f, st in zip(futures, stats):
        try:
          result = f if isinstance(f, tuple) else f.result()
        except DataError as e:
          if not cfg.skip_bad:
            for g in futures:
              if not isinstance(g, tuple):
                g.cancel()
            raise DataError(f"{e} (data.skip_bad=True skips such files)") from None
          bad.append(str(e))
          continue
        rel, file_digest, size, mode = result
        if st is not None:
          checked.add(result, st)
        kept.append(rel)
        digest.update(f"{rel}\0{file_digest}\n".encode())
        if first is None:
          first = (size, mode)
        elif other is None and size != first[0]:
          other = (rel, size)
      checked.end_chunk()
  checked.save()
  if bad:
    logging.warning("data.dir=%s: skipped %d unreadable %s pictures (first: %s)", root, len(bad), split,
                    bad[0])
  if not kept:
    raise DataError(f"data.dir={root!r}: the {split} split has no readable pictures")
  return kept, digest.hexdigest(), first, other, len(bad)


def _shuffled(rels: list[str]) -> list[str]:
  """The files in an order fixed by a hash of each path: data.train_size's first N are a sample of
  every class, not the first class's files (path order)."""
  return sorted(rels, key=lambda r: hashlib.sha256(b"order\0" + r.encode()).digest())


def _labels(rels: list[str], classes: list[str] | None):
  if classes is None:
    return None
  return np.asarray([classes.index(r.split(os.sep)[0]) for r in rels], np.int32)


def _load(cfg):
  root = os.path.abspath(cfg.dir)
  if not os.path.isdir(root):
    raise DataError(f"data.dir={cfg.dir!r}: no such folder of pictures")
  if os.path.isdir(os.path.join(root, "test")):
    if not os.path.isdir(os.path.join(root, "train")):
      raise DataError(f"data.dir={cfg.dir!r}: has a test/ subfolder but no train/ one")
    parts = {s: (os.path.join(root, s), _pictures(os.path.join(root, s))) for s in ("train", "test")}
    rule = "train/ and test/ subfolders"
  else:
    everything = _pictures(root)
    parts = {"train": (root, [r for r in everything if not _hashed_test(r, cfg.test_fraction)]),
             "test": (root, [r for r in everything if _hashed_test(r, cfg.test_fraction)])}
    rule = f"test: the files whose path hashes below data.test_fraction={cfg.test_fraction}"
  for split, (where, rels) in parts.items():
    if not rels:
      raise DataError(f"data.dir={cfg.dir!r}: no {split} pictures ({', '.join(EXTENSIONS)}) in {where}")
  nested = {split: {os.sep in r for r in rels} for split, (_, rels) in parts.items()}
  if any(len(v) > 1 for v in nested.values()) or nested["train"] != nested["test"]:
    raise DataError(f"data.dir={cfg.dir!r}: mixes pictures in class subfolders with pictures beside them; "
                    "put every picture in a class subfolder, or none")
  scanned = {split: _scan(where, rels, cfg, split) for split, (where, rels) in parts.items()}
  (first_size, first_mode) = scanned["train"][2]
  channels = cfg.channels or (1 if first_mode in ("1", "L", "I", "I;16", "F") else 3)
  classes = None
  if nested["train"] == {True}:
    classes = sorted({r.split(os.sep)[0] for kept, *_ in scanned.values() for r in kept})
  if cfg.image_size is None:
    for split, (kept, _, (size, _), other, _) in scanned.items():
      odd = other or ((kept[0], size) if size != first_size else None)
      if odd:
        raise DataError(f"{os.path.join(parts[split][0], odd[0])}: a picture of {odd[1][0]}x{odd[1][1]}, "
                        f"the first is {first_size[0]}x{first_size[1]}; set data.image_size to resize them")
  w, h = (cfg.image_size, cfg.image_size) if cfg.image_size else first_size
  shape = (h, w, channels)
  splits = []
  for split, (where, _) in parts.items():
    kept, files_digest, *_ = scanned[split]
    fingerprint = hashlib.sha256(f"{(shape, cfg.image_size, channels)}{files_digest}".encode()).hexdigest()
    files = _shuffled(kept)
    splits.append(FolderSplit(where, files, _labels(files, classes), channels, cfg.image_size, shape,
                              cfg.workers, fingerprint))
  skipped = {s: n for s, (*_, n) in scanned.items() if n}
  where = f"folder:{root} ({rule}{'; skipped ' + str(skipped) if skipped else ''})"
  return splits[0], splits[1], where


SOURCE = DataSource(_load, fields=FIELDS, needs_dir="a folder of pictures", module=__name__)
