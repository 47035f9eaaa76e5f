"""Reconstruction losses, all taking decoder logits so BCE stays stable at saturated pixels."""

import math

import jax
import jax.numpy as jnp
import optax

NAMES = ("mse", "bce")


def mse(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean squared error over all entries (Keras `mse` averaged over the batch)."""
  return jnp.mean(jnp.square(pred - target))


def bce_from_logits(logits: jax.Array, target: jax.Array) -> jax.Array:
  """Binary cross-entropy of sigmoid(logits) against targets in [0, 1], mean over entries."""
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, target))


def reconstruction_loss(name: str, logits: jax.Array, target: jax.Array) -> jax.Array:
  """`mse` compares sigmoid(logits) with the target; `bce` uses the logits directly."""
  if name == "mse":
    return mse(jax.nn.sigmoid(logits), target)
  if name == "bce":
    return bce_from_logits(logits, target)
  raise ValueError(f"loss={name!r}: expected one of {NAMES}")


def bits_per_dim(log_p_B, x_BHWC):
  """-log p(x) in nats per example as bits per pixel and channel."""
  return -log_p_B / (math.log(2) * math.prod(x_BHWC.shape[1:]))


def psnr(mse_value, max_value: float = 1.0):
  """Peak signal-to-noise ratio in dB for a given MSE on images in [0, max_value]."""
  return 10.0 * jnp.log10(max_value**2 / mse_value)
