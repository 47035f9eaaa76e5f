"""Latent-space tools: load a trained run, embed/decode/interpolate/traverse, probes and 2-D projections.

Analysis on top of the library: training never imports it.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ae_jax import checkpoint, data, metrics, models, objectives, plots, train
from ae_jax import config as config_lib
from ae_jax.data import transforms
from ae_jax.evaluation import knn_accuracy, linear_probe_accuracy, sample_latents
from ae_jax.models.apply import decode, embed, reconstruct


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
  The run's plugins (config.plugins) are imported first.
  """
  step, state, meta = checkpoint.read_latest(workdir)
  config = config_lib.from_saved(meta["config"])  # fields newer than the run keep their defaults
  with open(os.path.join(workdir, "run.json")) as f:
    run = json.load(f)
  for registry, name, what in ((objectives.REGISTRY, config.objective, "objective"),
                               (models.ARCHITECTURES, config.model.name, "model")):
    if name not in registry:
      raise ValueError(f"{what} {name!r} of {workdir} was registered by module "
                       f"{run.get(what, {}).get('module')!r}: import it (or list it in config.plugins) first")
  model = train.build_model(config, tuple(run["data"]["image_shape"]))
  saved = optax.tree_utils.tree_get(state["opt_state"], "ema", None) if config.ema_decay is not None else None
  params = jax.tree.map(jnp.asarray, state["params"] if saved is None else saved)
  return Trained(model, params, config, step)


def corrupt(noise_cfg: ml_collections.ConfigDict, key: jax.Array, images_NHWC, index_N=None) -> np.ndarray:
  """Corrupts images as training does: example i with fold_in(key, index_N[i])."""
  fn = transforms.corruption_fn(noise_cfg)
  if fn is None:
    raise ValueError("noise.kind='none': nothing to corrupt with")
  x = jnp.asarray(transforms.to_float(np.asarray(images_NHWC)))
  index = jnp.arange(len(x)) if index_N is None else jnp.asarray(index_N)
  return np.asarray(jax.jit(transforms.corrupt_batch, static_argnums=0)(fn, key, x, index))


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


def sample(model, params, n: int, seed: int = 0, train_z=None, components: int = 10):
  """(n decoded samples in [0, 1], how their latents were drawn): see evaluation.sample_latents."""
  z, how = sample_latents(model, n, seed, train_z, components)
  return decode(model, params, z), how


def traverse(model, params, image, z_reference=None, sigmas=(-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0),
             dims=None, values=None) -> np.ndarray:
  """Latent traversals of one image [H, W, C]: [len(dims), n, H, W, C] (dims: default every dimension).

  Row d is the image's latent with dimension d set to mean_d + s * std_d for each s in
  `sigmas`, mean and std over z_reference (latents of some data: embed(model, params,
  images)), so each dimension moves across its own spread (an AE's latents have
  whatever scale training gave them). Without z_reference a Gaussian latent uses
  its prior N(0, 1). `values` sets the same absolute values for every dimension
  instead. The beta-VAE's picture: a disentangled dimension changes one factor.
  """
  if model.latent == "grid":
    raise ValueError("latent='grid': a VQ-VAE's grid has no single dimensions to traverse")
  z = embed(model, params, np.asarray(image)[None])[0]
  dims = list(range(model.latent_dim) if dims is None else dims)
  if values is not None:
    grid_DN = np.tile(np.asarray(values, np.float32), (len(dims), 1))
  else:
    if z_reference is not None:
      ref = np.asarray(z_reference, np.float64)
      mean, std = ref.mean(0)[dims], ref.std(0)[dims]
    elif model.latent == "gaussian":
      mean, std = np.zeros(len(dims)), np.ones(len(dims))
    else:
      raise ValueError(f"latent={model.latent!r} has no prior to scale a traversal by: pass z_reference "
                       "(embed(model, params, images)) or absolute values")
    grid_DN = (mean[:, None] + std[:, None] * np.asarray(sigmas)[None]).astype(np.float32)
  path = np.repeat(z[None, None], grid_DN.size, 0).reshape(len(dims), grid_DN.shape[1], -1)
  for i, d in enumerate(dims):
    path[i, :, d] = grid_DN[i]
  images = decode(model, params, path.reshape(-1, model.latent_dim))
  return images.reshape(len(dims), grid_DN.shape[1], *images.shape[1:])


def probe_report(trained: Trained, ds: data.Dataset, max_train: int | None = 10_000, k: int = 5) -> dict:
  """Linear-probe and k-NN accuracy on latents, and the same probes on raw pixels as baseline."""
  if not ds.labelled:
    raise ValueError(f"{ds.source}: the probes predict labels, and this data has none")
  n_train = len(ds.train) if max_train is None else min(max_train, len(ds.train))
  train_x, train_y = transforms.to_float(ds.train[:n_train]), ds.train.labels[:n_train]
  test_x, test_y = transforms.to_float(ds.test[:]), ds.test.labels
  train_z = embed(trained.model, trained.params, train_x)
  test_z = embed(trained.model, trained.params, test_x)
  return {
      "linear_probe_accuracy": linear_probe_accuracy(train_z, train_y, test_z, test_y),
      "knn_accuracy": knn_accuracy(train_z, train_y, test_z, test_y, k),
      "pixel_linear_probe_accuracy": linear_probe_accuracy(train_x, train_y, test_x, test_y),
      "pixel_knn_accuracy": knn_accuracy(train_x, train_y, test_x, test_y, k),
      "latent_dim": int(np.prod(train_z.shape[1:])),
      "pixel_dim": int(np.prod(ds.image_shape)),
      "num_train": n_train,
      "num_test": len(ds.test),
      "knn_k": k,
      "data": ds.source,
      "step": trained.step,
  }


def probe_run(workdir: str, max_train: int | None = 10_000, tsne_points: int = 2000,
              data_dir: str | None = None) -> dict:
  """What `python -m experiments.probe` writes: WORKDIR/probes.json (probe_report) and pictures:
  latent_pca.png, latent_tsne.png, latent_scatter.png and manifold.png (2-D latents), interpolation.png,
  training_curves.png. data_dir replaces the run's data.dir (moved files)."""
  trained = load(workdir)
  data_cfg = trained.config.data
  if data_dir is not None:
    data_cfg.dir = data_dir
  ds = data.load(data_cfg)
  if not ds.labelled:
    raise ValueError(f"{ds.source}: the probes colour and predict latents by label, and this data has none")
  report = probe_report(trained, ds, max_train)
  test_x, test_y = transforms.to_float(ds.test[:]), ds.test.labels
  z = embed(trained.model, trained.params, test_x)
  pictures = {}

  def out(name):
    pictures[name] = os.path.join(workdir, name)
    return pictures[name]

  if z.shape[1] == 2:
    plots.latent_scatter(out("latent_scatter.png"), z, test_y, "test latents (2-D)")
    lo, hi = np.percentile(z, 1, axis=0), np.percentile(z, 99, axis=0)
    grid = latent_grid(trained.model, trained.params, ((lo[0], hi[0]), (lo[1], hi[1])))
    plots.image_grid(out("manifold.png"), grid, "decoded 2-D latent grid (1st-99th percentile)",
                     extent=(lo[0], hi[0], lo[1], hi[1]))
  else:
    plots.latent_scatter(out("latent_pca.png"), pca_2d(z), test_y,
                         f"test latents ({z.shape[1]}-D), first two principal components",
                         ("PC 1", "PC 2"))
  n = min(tsne_points, len(z))
  plots.latent_scatter(out("latent_tsne.png"), tsne_2d(z[:n]), test_y[:n],
                       f"t-SNE of {n} test latents", ("t-SNE 1", "t-SNE 2"))

  # Interpolate between the first test examples of labels (0, 1), (2, 3), ... where present.
  rows, labels = [], []
  first = {int(c): int(np.flatnonzero(test_y == c)[0]) for c in np.unique(test_y)}
  pairs = [(a, a + 1) for a in range(0, 10, 2) if a in first and a + 1 in first][:4]
  for a, b in pairs:
    for method in ("linear", "slerp"):
      rows.append(interpolate(trained.model, trained.params, test_x[first[a]], test_x[first[b]], steps=10,
                              method=method))
      labels.append(f"{method} {a}->{b}")
  if rows:
    plots.image_rows(out("interpolation.png"), rows, labels, "latent interpolation")
  records = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  if records:
    plots.training_curves(out("training_curves.png"), records)
  report["pictures"] = sorted(pictures)
  metrics.write_json(os.path.join(workdir, "probes.json"), report)
  return report


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


__all__ = ["Trained", "corrupt", "decode", "denoise", "embed", "interpolate", "knn_accuracy", "latent_grid",
           "linear_probe_accuracy", "load", "pca_2d", "probe_report", "probe_run", "reconstruct", "sample",
           "sample_latents", "slerp", "traverse", "tsne_2d"]
