"""dSprites generated from its definition: the published factor grid and order, and the drawing."""

import numpy as np

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
