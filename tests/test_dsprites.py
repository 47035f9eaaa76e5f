"""dSprites generated from its definition: the published factor grid and order, and the drawing."""

import numpy as np
import pytest

from ae_jax import config as config_lib
from ae_jax import data
from ae_jax.data import dsprites


def test_the_factor_grid_is_the_published_one():
  assert dsprites.NUM_IMAGES == 737_280 and dsprites.SIZES == (1, 3, 6, 40, 32, 32)
  c = dsprites.classes(np.arange(dsprites.NUM_IMAGES))
  np.testing.assert_array_equal(np.ravel_multi_index(c.T, dsprites.SIZES), np.arange(dsprites.NUM_IMAGES))
  v = dsprites.values(c[[0, 737_279]])
  np.testing.assert_allclose(v, [[1, 1, 0.5, 0, 0, 0], [1, 3, 1, 2 * np.pi, 1, 1]])
  all_values = dsprites.values(c)
  np.testing.assert_allclose(np.unique(all_values[:, 2]), np.linspace(0.5, 1, 6))
  np.testing.assert_allclose(np.unique(all_values[:, 3]), np.linspace(0, 2 * np.pi, 40))
  np.testing.assert_allclose(np.unique(all_values[:, 4]), np.linspace(0, 1, 32))
  assert dsprites.classes([1]).tolist() == [[0, 0, 0, 0, 0, 1]]  # posY varies fastest, as in the file


def _one(shape=0, scale=5, orientation=0, x=16, y=16):
  return dsprites.render(np.array([[0, shape, scale, orientation, x, y]]))[0, ..., 0]


def test_the_drawing_follows_each_factor():
  img = _one()
  assert img.dtype == np.uint8 and set(np.unique(img)) == {0, 255}
  for shape in range(3):  # area ~ scale^2
    ratio = (_one(shape, 5) > 0).sum() / (_one(shape, 0) > 0).sum()
    assert 3.4 < ratio < 4.6, (shape, ratio)
  for x in (0, 10, 31):  # the centre moves linearly across [MARGIN, 64 - MARGIN]
    cols = np.nonzero(_one(shape=1, x=x) > 0)[1] + 0.5
    want = dsprites.MARGIN + x / 31 * (64 - 2 * dsprites.MARGIN)
    assert abs(cols.mean() - want) < 0.6, (x, cols.mean(), want)
  ellipse_0, ellipse_quarter = _one(shape=1, orientation=0), _one(shape=1, orientation=10)
  h = np.nonzero(ellipse_0)  # orientation 0: wider than tall; about a quarter turn later: taller
  assert np.ptp(h[1]) > np.ptp(h[0])
  q = np.nonzero(ellipse_quarter)
  assert np.ptp(q[0]) > np.ptp(q[1])
  assert (_one(shape=2, orientation=0) != _one(shape=2, orientation=39)).sum() <= 2  # 0 and 2 pi
  assert len({_one(s).tobytes() for s in range(3)}) == 3


def test_factor_data_samples_and_observes():
  data = dsprites.factor_data()
  assert data.factor_sizes == (3, 6, 40, 32, 32)
  f = data.sample_factors(5, np.random.default_rng(0))
  x = data.observe(f)
  assert x.shape == (5, 64, 64, 1) and x.dtype == np.float32 and set(np.unique(x)) <= {0.0, 1.0}
  full = np.concatenate([np.zeros((5, 1), np.int64), f], axis=1)
  np.testing.assert_array_equal(x * 255, dsprites.render(full))


def _data_config(**fields):
  c = config_lib.get_default()
  c.data.source = "dsprites"
  for k, v in fields.items():
    c.data[k] = v
  return c.data


def test_the_generated_source_splits_labels_and_factors():
  ds = data.load(_data_config())
  assert (len(ds.train), len(ds.test)) == (727_280, 10_000) and ds.image_shape == (64, 64, 1)
  assert ds.factors.factor_sizes == (3, 6, 40, 32, 32)
  assert ds.factors.names == ("shape", "scale", "orientation", "posX", "posY")
  # The test split is a fixed random sample, apart from the training split; each image is its index's.
  order = np.random.default_rng(0).permutation(dsprites.NUM_IMAGES)
  np.testing.assert_array_equal(ds.test.factors, dsprites.classes(order[:10_000]))
  np.testing.assert_array_equal(ds.train[[0, 5]], dsprites.images(order[[10_000, 10_005]]))
  np.testing.assert_array_equal(ds.test.labels[:50], dsprites.classes(order[:50])[:, 1])
  assert np.bincount(ds.test.labels).min() > 3000  # shuffled: every shape in any prefix
  again = data.load(_data_config())
  assert again.summary() == ds.summary() and ds.summary()["factors"] == list(ds.factors.names)
  assert data.load(_data_config(dsprites_variant="colour")).summary()["sha256"] != ds.summary()["sha256"]


def test_the_colour_variant_paints_shape_and_background_by_two_factors():
  grid = dsprites.Grid("colour")
  assert grid.sizes == (4, 3, 6, 40, 32, 32, 4) and grid.image_shape == (64, 64, 3)
  c = np.array([[2, 1, 5, 0, 16, 16, 3]])
  img = grid.images(np.ravel_multi_index(c.T, grid.sizes))[0]
  inside = dsprites.render(np.array([[0, 1, 5, 0, 16, 16]]))[0, ..., 0] > 0
  np.testing.assert_array_equal(img[inside], np.broadcast_to(dsprites.SHAPE_COLOURS[2], (inside.sum(), 3)))
  np.testing.assert_array_equal(img[~inside], np.broadcast_to(dsprites.BACKGROUNDS[3], ((~inside).sum(), 3)))
  f = grid.factor_data()
  assert f.factor_sizes == (4, 3, 6, 40, 32, 32, 4) and f.names[-1] == "background"


def _write_published(path, sizes=(1, 3, 2, 4, 4, 4), **replace):
  """A file of the published layout for a smaller grid, drawn by this module (0/1 images)."""
  n = int(np.prod(sizes))
  classes = np.stack(np.unravel_index(np.arange(n), sizes), axis=-1)
  arrays = {"imgs": (dsprites.render(classes)[..., 0] // 255).astype(np.uint8),
            "latents_classes": classes.astype(np.int64), "latents_values": dsprites.values(classes)}
  arrays.update(replace)
  np.savez_compressed(path, **arrays)
  return arrays


def test_the_published_layout_is_read_and_checked(tmp_path):
  arrays = _write_published(tmp_path / "d.npz")
  ds = data.load(_data_config(dir=str(tmp_path / "d.npz")))
  assert (len(ds.train), len(ds.test)) == (346, 38)  # a tenth of a small grid for the test split
  assert ds.factors.factor_sizes == (3, 2, 4, 4, 4) and ds.source.startswith("dsprites:")
  order = np.random.default_rng(0).permutation(384)
  np.testing.assert_array_equal(ds.test[:3][..., 0], arrays["imgs"][order[:3]] * 255)
  f = np.array([[2, 1, 3, 0, 2]])
  np.testing.assert_array_equal(ds.factors.observe(f)[0, ..., 0],
                                arrays["imgs"][np.ravel_multi_index([[0], *f.T], (1, 3, 2, 4, 4, 4))][0])
  bad = {"shuffled": dict(latents_classes=arrays["latents_classes"][::-1].copy()),
         "grey": dict(imgs=arrays["imgs"] * 200)}
  for name, replace in bad.items():
    _write_published(tmp_path / f"{name}.npz", **replace)
    with pytest.raises(data.DataError, match="not the complete grid|range over"):
      data.load(_data_config(dir=str(tmp_path / f"{name}.npz")))
  np.savez(tmp_path / "other.npz", train_images=np.zeros((2, 64, 64), np.uint8))
  with pytest.raises(data.DataError, match=r"not the dSprites layout \(missing"):
    data.load(_data_config(dir=str(tmp_path / "other.npz")))
  with pytest.raises(data.DataError, match="the published file is the binary variant"):
    data.load(_data_config(dir=str(tmp_path / "d.npz"), dsprites_variant="colour"))
