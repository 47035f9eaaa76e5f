"""Losses against float64 numpy references, and BCE stability at saturated logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ae_jax import losses


def _np_sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def test_mse_matches_numpy():
  rng = np.random.default_rng(0)
  a, b = rng.random((4, 28, 28, 1)), rng.random((4, 28, 28, 1))
  np.testing.assert_allclose(losses.mse(jnp.asarray(a), jnp.asarray(b)), np.mean((a - b) ** 2),
                             rtol=1e-6)


def test_bce_from_logits_matches_numpy():
  rng = np.random.default_rng(1)
  logits = rng.normal(0, 3, (4, 28, 28, 1))
  target = rng.random((4, 28, 28, 1))
  p = _np_sigmoid(logits)
  ref = np.mean(-(target * np.log(p) + (1 - target) * np.log(1 - p)))
  np.testing.assert_allclose(
      losses.bce_from_logits(jnp.asarray(logits, jnp.float32), jnp.asarray(target, jnp.float32)),
      ref, rtol=1e-5)


def test_bce_is_stable_at_saturated_pixels():
  logits = jnp.array([100.0, -100.0, 100.0, -100.0])
  target = jnp.array([1.0, 0.0, 0.0, 1.0])
  per = jax.vmap(losses.bce_from_logits)(logits, target)
  # log(1 + e^-100) ~ 0 for the right answers; exactly 100 for the wrong ones.
  np.testing.assert_allclose(per, [0.0, 0.0, 100.0, 100.0], atol=1e-6)
  grads = jax.grad(lambda z: losses.bce_from_logits(z, target))(logits)
  assert np.all(np.isfinite(np.asarray(grads)))


def test_reconstruction_loss_dispatch():
  logits = jnp.array([[0.0, 2.0]])
  target = jnp.array([[0.5, 1.0]])
  np.testing.assert_allclose(losses.reconstruction_loss("mse", logits, target),
                             np.mean((_np_sigmoid(np.array([0.0, 2.0])) - [0.5, 1.0]) ** 2),
                             rtol=1e-6)
  with pytest.raises(ValueError, match="loss='l1'"):
    losses.reconstruction_loss("l1", logits, target)


def test_psnr():
  np.testing.assert_allclose(losses.psnr(0.01), 20.0, rtol=1e-6)
