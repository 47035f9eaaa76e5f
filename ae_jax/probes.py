"""Latent-space tools: load a trained run, embed/decode/interpolate, probes and 2-D projections."""

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ae_jax import checkpoint, data, models, noise
from ae_jax import config as config_lib


@dataclasses.dataclass(frozen=True)
class Trained:
  """A model with its params and the config it was trained with."""

  model: models.Autoencoder
  params: dict
  config: ml_collections.ConfigDict
  step: int


def load(workdir: str) -> Trained:
  """Restores model + params of the latest checkpoint in a workdir written by experiments.train.

  The params are those the run evaluates: their EMA when it kept one (ema_decay).
  """
  step, state, meta = checkpoint.read_latest(workdir)
  config = config_lib.get_default()  # fields newer than the run keep their defaults
  config.update(meta["config"])
  with open(os.path.join(workdir, "run.json")) as f:
    image_shape = tuple(json.load(f)["data"]["image_shape"])
  model = models.from_config(config, image_shape)
  saved = optax.tree_utils.tree_get(state["opt_state"], "ema", None) if config.ema_decay is not None else None
  params = jax.tree.map(jnp.asarray, state["params"] if saved is None else saved)
  return Trained(model, params, config, step)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _apply(model, method: str, params, x):
  out = model.apply({"params": params}, x, method=method)
  return jax.nn.sigmoid(out) if method == "logits" else out


def _check_batch(what: str, x, expected: tuple) -> np.ndarray:
  """x as float32 if its shape is [N, *expected]; else a one-line ValueError saying what is expected."""
  x = np.asarray(x, np.float32)
  if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != tuple(expected) or len(x) == 0:
    one = " (one example: x[None])" if tuple(x.shape) == tuple(expected) else ""
    raise ValueError(f"{what}: shape {tuple(x.shape)}, expected [N, {', '.join(map(str, expected))}]"
                     f"{one}")
  return x


def _batched(model, method: str, params, x: np.ndarray, batch_size: int) -> np.ndarray:
  """Applies `method` over x in fixed-size batches (the last one padded): one compilation."""
  return np.concatenate([np.asarray(_apply(model, method, params, chunk))[:valid]
                         for _, chunk, valid in data.padded_batches(np.asarray(x, np.float32),
                                                                    batch_size)])


def embed(model, params, images_NHWC, batch_size: int = 1000) -> np.ndarray:
  """Images [N, H, W, C] -> latents z_ND."""
  images = _check_batch("images_NHWC", images_NHWC, model.image_shape)
  return _batched(model, "encode", params, images, batch_size)


def reconstruct(model, params, images_NHWC, batch_size: int = 1000) -> np.ndarray:
  """Images [N, H, W, C] -> reconstructions in [0, 1] (sigmoid of the logits, whatever model.output says)."""
  images = _check_batch("images_NHWC", images_NHWC, model.image_shape)
  return _batched(model, "logits", params, images, batch_size)


def decode(model, params, z_ND, batch_size: int = 1000) -> np.ndarray:
  """Latents [N, *model.latent_shape()] -> images in [0, 1] (a grid is quantised first)."""
  z = _check_batch("z_ND", z_ND, model.latent_shape())
  out = _batched(model, "decode", params, z, batch_size)
  return out if model.output == "probabilities" else np.asarray(jax.nn.sigmoid(out))


def corrupt(noise_cfg: ml_collections.ConfigDict, key: jax.Array, images_NHWC,
            index_N=None) -> np.ndarray:
  """Corrupts images as training does: example i with fold_in(key, index_N[i])."""
  fn = noise.corruption_fn(noise_cfg)
  if fn is None:
    raise ValueError("noise.kind='none': nothing to corrupt with")
  x = jnp.asarray(images_NHWC, jnp.float32)
  index = jnp.arange(len(x)) if index_N is None else jnp.asarray(index_N)
  return np.asarray(jax.jit(noise.corrupt_batch, static_argnums=0)(fn, key, x, index))


def denoise(model, params, noise_cfg, key, images_NHWC, batch_size: int = 1000):
  """(corrupted, denoised) for clean images, corrupted per noise_cfg with `key`."""
  noisy = corrupt(noise_cfg, key, images_NHWC)
  return noisy, reconstruct(model, params, noisy, batch_size)


def slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
  """Spherical interpolation between vectors a and b (falls to linear when they are parallel)."""
  na, nb = np.linalg.norm(a), np.linalg.norm(b)
  cos = np.clip(np.dot(a / na, b / nb), -1.0, 1.0)
  omega = np.arccos(cos)
  t = t[:, None]
  if omega < 1e-6:
    return (1 - t) * a + t * b
  return (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)


def interpolate(model, params, image_a, image_b, steps: int = 10, method: str = "linear"):
  """Decoded images along the latent path from image_a to image_b (each [H, W, C]): [steps, H, W, C].

  method: 'linear' or 'spherical' (slerp, for latents whose norm carries little meaning).
  """
  z = embed(model, params, np.stack([image_a, image_b]))
  flat = z.reshape(2, -1)  # a grid latent (VQ-VAE) is interpolated as one vector, then quantised
  t = np.linspace(0.0, 1.0, steps)
  if method == "linear":
    path = (1 - t)[:, None] * flat[0] + t[:, None] * flat[1]
  elif method in ("spherical", "slerp"):
    path = slerp(flat[0], flat[1], t)
  else:
    raise ValueError(f"method={method!r}: expected 'linear' or 'spherical' (alias 'slerp')")
  return decode(model, params, path.reshape(steps, *z.shape[1:]).astype(np.float32))


def sample_latents(model, n: int, seed: int, train_z=None, components: int = 10) -> tuple[np.ndarray, str]:
  """(n latents, how they were drawn): from the prior N(0, I) for a Gaussian latent (VAE,
  IWAE); else from a Gaussian mixture (full covariances, scikit-learn) fitted to train_z,
  the training latents (Ghosh et al. 2020), which a deterministic model needs."""
  if model.latent == "gaussian":
    return np.asarray(jax.random.normal(jax.random.key(seed), (n, model.latent_dim))), "prior N(0, I)"
  if train_z is None:
    raise ValueError(f"train_z=None: a {model.latent} latent has no prior; pass the training latents "
                     "(embed(model, params, train_images)) to fit a mixture to")
  from sklearn.mixture import GaussianMixture  # pylint: disable=g-import-not-at-top

  flat = np.asarray(train_z, np.float64).reshape(len(train_z), -1)
  gmm = GaussianMixture(components, covariance_type="full", reg_covar=1e-4, random_state=seed).fit(flat)
  z, _ = gmm.sample(n)
  z = z[np.random.default_rng(seed).permutation(n)]  # sklearn returns them grouped by component
  return z.reshape(n, *np.shape(train_z)[1:]).astype(np.float32), f"{components}-component Gaussian mixture"


def sample(model, params, n: int, seed: int = 0, train_z=None, components: int = 10):
  """(n decoded samples in [0, 1], how their latents were drawn): see sample_latents."""
  z, how = sample_latents(model, n, seed, train_z, components)
  return decode(model, params, z), how


def traverse(model, params, image, values=(-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0), dims=None) -> np.ndarray:
  """Latent traversals of one image [H, W, C]: its latent with dimension d set to each of
  `values`, decoded: [len(dims), len(values), H, W, C] (dims: default every dimension).
  The beta-VAE's picture: a disentangled dimension changes one factor of the digit."""
  if model.latent == "grid":
    raise ValueError("latent='grid': a VQ-VAE's grid has no single dimensions to traverse")
  z = embed(model, params, np.asarray(image)[None])[0]
  dims = range(model.latent_dim) if dims is None else dims
  values = np.asarray(values, np.float32)
  path = np.repeat(z[None, None], len(dims) * len(values), 0).reshape(len(dims), len(values), -1)
  for i, d in enumerate(dims):
    path[i, :, d] = values
  images = decode(model, params, path.reshape(-1, model.latent_dim))
  return images.reshape(len(dims), len(values), *images.shape[1:])


def linear_probe_accuracy(train_z, train_y, test_z, test_y, seed: int = 0) -> float:
  """Test accuracy of a logistic regression (standardised features) fit on the train latents."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  from sklearn.pipeline import make_pipeline  # pylint: disable=g-import-not-at-top
  from sklearn.preprocessing import StandardScaler  # pylint: disable=g-import-not-at-top

  clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
  clf.fit(np.asarray(train_z).reshape(len(train_z), -1), train_y)
  return float(clf.score(np.asarray(test_z).reshape(len(test_z), -1), test_y))


def knn_accuracy(train_z, train_y, test_z, test_y, k: int = 5) -> float:
  """Test accuracy of k-nearest-neighbour classification (Euclidean) against the train latents."""
  from sklearn.neighbors import KNeighborsClassifier  # pylint: disable=g-import-not-at-top

  clf = KNeighborsClassifier(n_neighbors=k)
  clf.fit(np.asarray(train_z).reshape(len(train_z), -1), train_y)
  return float(clf.score(np.asarray(test_z).reshape(len(test_z), -1), test_y))


def probe_report(trained: Trained, ds: data.Dataset, max_train: int | None = 10_000,
                 k: int = 5) -> dict:
  """Linear-probe and k-NN accuracy on latents, and the same probes on raw pixels as baseline."""
  n_train = len(ds.train_x) if max_train is None else min(max_train, len(ds.train_x))
  train_x, train_y = ds.train_x[:n_train], ds.train_y[:n_train]
  train_z = embed(trained.model, trained.params, train_x)
  test_z = embed(trained.model, trained.params, ds.test_x)
  return {
      "linear_probe_accuracy": linear_probe_accuracy(train_z, train_y, test_z, ds.test_y),
      "knn_accuracy": knn_accuracy(train_z, train_y, test_z, ds.test_y, k),
      "pixel_linear_probe_accuracy": linear_probe_accuracy(train_x, train_y, ds.test_x, ds.test_y),
      "pixel_knn_accuracy": knn_accuracy(train_x, train_y, ds.test_x, ds.test_y, k),
      "latent_dim": int(np.prod(train_z.shape[1:])),
      "pixel_dim": int(np.prod(ds.image_shape)),
      "num_train": n_train,
      "num_test": int(len(ds.test_x)),
      "knn_k": k,
      "data": ds.source,
      "step": trained.step,
  }


def pca_2d(z_ND: np.ndarray) -> np.ndarray:
  """Projection of z onto its first two principal components."""
  z = np.asarray(z_ND, np.float64)
  z = z - z.mean(0)
  _, _, vt = np.linalg.svd(z, full_matrices=False)
  return z @ vt[:2].T


def tsne_2d(z_ND: np.ndarray, seed: int = 0) -> np.ndarray:
  """t-SNE embedding in 2-D (scikit-learn; PCA initialisation)."""
  from sklearn.manifold import TSNE  # pylint: disable=g-import-not-at-top

  perplexity = min(30.0, (len(z_ND) - 1) / 3)
  return TSNE(2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(
      np.asarray(z_ND, np.float64))


def latent_grid(model, params, z_range, n: int = 15) -> np.ndarray:
  """Decoded images over an n x n grid of a 2-D latent space: [n, n, H, W, C], row 0 at the top."""
  if model.latent_dim != 2:
    raise ValueError(f"latent_dim={model.latent_dim}: the manifold grid needs a 2-D latent space")
  (x0, x1), (y0, y1) = z_range
  xs, ys = np.linspace(x0, x1, n), np.linspace(y1, y0, n)  # y decreasing: top row is high z[1]
  grid = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2).astype(np.float32)
  images = decode(model, params, grid)
  return images.reshape(n, n, *images.shape[1:])
