"""Corruption statistics, key determinism and device-split invariance."""

import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ae_jax.data import transforms

SHAPE = (64, 28, 28, 1)


def _images():
  return jax.random.uniform(jax.random.key(7), SHAPE)


def test_gaussian_statistics_unclipped():
  x = jnp.zeros(SHAPE)
  y = transforms.gaussian(jax.random.key(0), x, mean=0.5, std=0.5, clip=False)
  assert abs(float(y.mean()) - 0.5) < 0.01
  assert abs(float(y.std()) - 0.5) < 0.01


def test_gaussian_reference_is_clipped_to_unit_interval():
  x = _images()
  y = transforms.gaussian(jax.random.key(0), x, mean=0.5, std=0.5, clip=True)
  assert float(y.min()) == 0.0 and float(y.max()) == 1.0
  # With mean 0.5 and std 0.5 a pixel is clipped at 1 whenever x + n > 1.
  expected_ones = np.mean(np.asarray(x) + 0.5 + 0.5 * np.asarray(
      jax.random.normal(jax.random.key(0), SHAPE)) >= 1.0)
  assert abs(float(jnp.mean(y == 1.0)) - expected_ones) < 1e-6


@pytest.mark.parametrize("nu", [0.0, 0.1, 0.5, 0.7, 1.0])
def test_masking_zeroes_exact_fraction(nu):
  x = jnp.ones((28, 28, 1))
  y = transforms.masking(jax.random.key(3), x, nu=nu)
  assert int(jnp.sum(y == 0.0)) == round(nu * 784)
  assert set(np.unique(np.asarray(y))) <= {0.0, 1.0}


@pytest.mark.parametrize("nu", [0.1, 0.4])
def test_salt_and_pepper_fraction_and_balance(nu):
  x = jnp.full(SHAPE, 0.5)
  fn = functools.partial(transforms.salt_and_pepper, nu=nu)
  y = transforms.corrupt_batch(fn, jax.random.key(1), x, jnp.arange(SHAPE[0]))
  changed = np.asarray(y != 0.5)
  per_example = changed.reshape(SHAPE[0], -1).sum(1)
  np.testing.assert_array_equal(per_example, round(nu * 784))
  salt = float(jnp.sum(y == 1.0)) / changed.sum()
  assert abs(salt - 0.5) < 0.02


def test_same_key_same_noise_other_key_other_noise():
  x = _images()
  a = transforms.gaussian(jax.random.key(0), x)
  b = transforms.gaussian(jax.random.key(0), x)
  c = transforms.gaussian(jax.random.key(1), x)
  np.testing.assert_array_equal(a, b)
  assert float(jnp.mean(a != c)) > 0.5


def test_noise_depends_only_on_global_index_not_on_split():
  fn = functools.partial(transforms.masking, nu=0.3)
  x = _images()
  key = jax.random.key(5)
  whole = transforms.corrupt_batch(fn, key, x, jnp.arange(64))
  parts = [transforms.corrupt_batch(fn, key, x[i:i + 16], i + jnp.arange(16)) for i in range(0, 64, 16)]
  np.testing.assert_array_equal(whole, jnp.concatenate(parts))
  # Different examples get different masks.
  assert not np.array_equal(whole[0] == 0, whole[1] == 0)


class JitTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_corruptions_are_jittable(self):
    x = _images()
    for kind in ("gaussian", "masking", "salt_and_pepper"):
      cfg = ml_collections.ConfigDict(dict(kind=kind, mean=0.5, std=0.5, clip=True, nu=0.3))
      fn = transforms.corruption_fn(cfg)
      y = self.variant(lambda k, x, fn=fn: transforms.corrupt_batch(fn, k, x, jnp.arange(64)))(
          jax.random.key(0), x)
      chex.assert_shape(y, SHAPE)
      chex.assert_tree_all_finite(y)


def test_unknown_kind_is_refused():
  cfg = ml_collections.ConfigDict(dict(kind="speckle"))
  with pytest.raises(ValueError, match="noise.kind='speckle'"):
    transforms.corruption_fn(cfg)
  assert transforms.corruption_fn(ml_collections.ConfigDict(dict(kind="none"))) is None


@pytest.mark.parametrize("fn", [transforms.masking, transforms.salt_and_pepper])
def test_a_traced_level_draws_what_a_fixed_one_does(fn):
  # noise_sweep compiles once per kind with nu as an argument; the pixels hit must not change.
  x = jax.random.uniform(jax.random.key(0), (28, 28, 1))
  traced = jax.jit(lambda key, x, nu: fn(key, x, nu=nu))
  for nu in (0.1, 0.3, 0.7):
    np.testing.assert_array_equal(traced(jax.random.key(4), x, np.float32(nu)),
                                  fn(jax.random.key(4), x, nu=nu))
