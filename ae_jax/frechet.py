"""Fréchet distance between image sets in the features of a small classifier the project trains itself.

Inception weights cannot be downloaded on an offline machine, and Inception
features of 28x28 digits say little anyway; so, as for MNIST FIDs in the
literature, the features are the penultimate layer of a small CNN trained on
the training split. It is trained deterministically (fixed seed, fixed data
order) and cached by the checksum of the training data, so every model of
every run on the same data is measured with the same features.
"""

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ae_jax.data import cache, sampler, transforms

CLASSIFIER_VERSION = 1  # bump when the architecture or its training changes: a new cache entry
EPOCHS, BATCH, SEED = 2, 128, 0


class Classifier(nn.Module):
  """conv 32 s2, conv 64 s2, dense 128 (the features), dense num_classes."""

  num_classes: int = 10

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, features: bool = False) -> jax.Array:
    x = nn.relu(nn.Conv(32, (3, 3), strides=2, padding="SAME")(x_BHWC))
    x = nn.relu(nn.Conv(64, (3, 3), strides=2, padding="SAME")(x))
    f_BF = nn.relu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
    return f_BF if features else nn.Dense(self.num_classes)(f_BF)


def _train(train) -> dict:
  train_y = train.labels
  model = Classifier(int(train_y.max()) + 1)
  params = jax.jit(model.init)(jax.random.key(SEED), jnp.zeros((1, *train.image_shape)))["params"]
  tx = optax.adam(1e-3)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss_fn(p):
      logits = model.apply({"params": p}, transforms.to_float(x))
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  for epoch in range(EPOCHS):
    order = sampler.epoch_order(jax.random.key(SEED), epoch, len(train))
    for i in range(len(train) // BATCH):
      idx = order[i * BATCH:(i + 1) * BATCH]
      params, opt_state = step(params, opt_state, train[idx], train_y[idx])
  return jax.device_get(params)


def classifier(train) -> tuple[Classifier, dict]:
  """(model, params) of the feature classifier for a labelled training split: from the cache, or
  trained (about 20 s for MNIST on 2 CPU cores) and cached by the split's fingerprint."""
  if train.labels is None:
    raise ValueError("the Fréchet classifier learns from labels, and this training split has none")
  name = f"frechet-classifier-v{CLASSIFIER_VERSION}-{train.fingerprint()[:16]}.npz"
  path = os.path.join(cache.cache_dir(), name)
  model = Classifier(int(train.labels.max()) + 1)
  cached = cache.read_cache(path)
  if cached is None:
    params = _train(train)
    flat = {"/".join(k.key for k in path_): np.asarray(v)
            for path_, v in jax.tree_util.tree_leaves_with_path(params)}
    cache.write_cache(path, flat)
  else:
    params = {}
    for name, v in cached.items():
      node = params
      *parents, leaf = name.split("/")
      for p in parents:
        node = node.setdefault(p, {})
      node[leaf] = v
  return model, params


@functools.partial(jax.jit, static_argnums=0)
def _features(model, params, x):
  return model.apply({"params": params}, x, features=True)


def features(model: Classifier, params: dict, images_NHWC, batch_size: int = 1000) -> np.ndarray:
  """Penultimate-layer features [N, 128] of images (uint8, or float in [0, 1])."""
  return np.concatenate([np.asarray(_features(model, params, transforms.to_float(x)))[:valid]
                         for _, x, valid in sampler.padded_batches(images_NHWC, batch_size)])


@functools.partial(jax.jit, static_argnums=0)
def _logits(model, params, x):
  return model.apply({"params": params}, x)


def accuracy(model: Classifier, params: dict, images_NHWC, labels_N) -> float:
  """Test accuracy of the classifier (reported beside the distances it measures)."""
  logits = np.concatenate([np.asarray(_logits(model, params, transforms.to_float(x)))[:valid]
                           for _, x, valid in sampler.padded_batches(images_NHWC, 1000)])
  return float(np.mean(logits.argmax(-1) == np.asarray(labels_N)))


def gaussian_stats(features_NF: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(mean, covariance) of the features, in float64."""
  f = np.asarray(features_NF, np.float64)
  return f.mean(0), np.cov(f, rowvar=False)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh(sigma)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)): the Fréchet (2-Wasserstein) distance
  between two Gaussians (Heusel et al. 2017).

  Tr (S1 S2)^(1/2) is computed as the sum of the square roots of the eigenvalues
  of the symmetric S1^(1/2) S2 S1^(1/2) (the same eigenvalues), which stays exact
  for the singular covariances of features with dead ReLUs, where a general
  matrix square root (scipy.linalg.sqrtm) warns and loses accuracy.
  """
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  root1 = _psd_sqrt(sigma1)
  eig = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
  diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sum(np.sqrt(np.clip(eig, 0, None))))


def distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
  """Fréchet distance between two feature sets."""
  return frechet_distance(*gaussian_stats(feats_a), *gaussian_stats(feats_b))
