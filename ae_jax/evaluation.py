"""The end-of-run evaluation a paper reports (`eval.final`): one function per number, `final` for all.

For every model: the deterministic reconstruction's MSE, PSNR and SSIM on the
clean test set and the active latent units. With labels: linear-probe and k-NN
accuracy of the latents, and the Fréchet distance (frechet.py, in the features
of a classifier trained on the labels) of decoded samples to the test images,
beside the train-vs-test floor. Samples come from the prior for a Gaussian
latent, else from a Gaussian mixture fitted to the training latents (Ghosh et
al. 2020). For objectives of a latent-variable model (their record's
`log_weights`) also an importance-sampled NLL; for a grid latent the
codebook's perplexity and the codes used. For a source with known factors
(dSprites) the disentanglement scores of the posterior means (disentanglement.py).
"""

import functools
import time

import dm_pix
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ae_jax import data, disentanglement, frechet, losses, objectives
from ae_jax.data import transforms
from ae_jax.models import apply

MAX_FIT_EXAMPLES = 10_000  # training latents for the probes and the mixture
MAX_CLASSIFIER_EXAMPLES = 60_000  # the Fréchet classifier's training images (MNIST's whole split)


def ssim(images_a: np.ndarray, images_b: np.ndarray, batch_size: int = 1000) -> float:
  """Mean SSIM (dm_pix: 11x11 Gaussian window, sigma 1.5, channels averaged) of image pairs in [0, 1]."""
  fn = jax.jit(dm_pix.ssim)
  total = 0.0
  for start in range(0, len(images_a), batch_size):
    total += float(jnp.sum(fn(images_a[start:start + batch_size], images_b[start:start + batch_size])))
  return total / len(images_a)


def active_units(mean_ND: np.ndarray, threshold: float = 0.01) -> int:
  """Latent dimensions whose posterior mean E_q[z_d|x] varies over the data by more than
  `threshold` (variance; Burda et al. 2016). For a deterministic encoder, z itself."""
  flat = np.asarray(mean_ND, np.float64).reshape(len(mean_ND), -1)
  return int(np.sum(np.var(flat, axis=0) > threshold))


def codebook_use(codes: np.ndarray, num_codes: int) -> dict:
  """Perplexity exp(H(p)) of the codes' frequencies p, and how many codes occur."""
  p = np.bincount(np.asarray(codes).ravel(), minlength=num_codes) / np.asarray(codes).size
  nz = p[p > 0]
  return {"vq_perplexity": float(np.exp(-np.sum(nz * np.log(nz)))), "vq_codes_used": int(len(nz))}


def importance_nll(log_weights, params, images_NHWC: np.ndarray, key: jax.Array, num_samples: int, *,
                   chunk: int = 50, batch_size: int = 100) -> np.ndarray:
  """-log p(x) per example, estimated with num_samples importance samples from q(z|x) (nats):
  -log (1/k) sum_j p(x, z_j) / q(z_j|x), the IWAE bound at k, drawn in chunks of `chunk`
  samples (chunk c of example i from fold_in(fold_in(key, c), i)). log_weights is an
  objective record's, bound (Objective.log_weights)."""
  fn = jax.jit(log_weights, static_argnums=4)
  out = []
  for start, x, valid in data.padded_batches(np.asarray(images_NHWC, np.float32), batch_size):
    position = jnp.arange(start, start + len(x))
    log_w = [fn(params, x, position, jax.random.fold_in(key, c), min(chunk, num_samples - done))
             for c, done in enumerate(range(0, num_samples, chunk))]
    log_w = jnp.concatenate(log_w, axis=1)
    nll = -(jax.nn.logsumexp(log_w, axis=1) - jnp.log(num_samples))
    out.append(np.asarray(nll)[:valid])
  return np.concatenate(out)


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


def final(model, params, config: ml_collections.ConfigDict, ds: data.Dataset, eval_key: jax.Array) -> dict:
  """Every number of the comparison table for one trained model (see the module docstring)."""
  t0 = time.perf_counter()
  cfg = config.eval
  n_test = len(ds.test) if cfg.final_examples is None else min(cfg.final_examples, len(ds.test))
  test_x = transforms.to_float(np.asarray(ds.test[:n_test]))  # held whole: a streamed split is read once
  n_fit = min(MAX_FIT_EXAMPLES, len(ds.train))
  recon = apply.reconstruct(model, params, test_x)
  mse = float(np.mean(np.square(recon - test_x)))
  out = {"final_examples": n_test, "det_recon_mse": mse, "det_recon_psnr": float(losses.psnr(mse)),
         "ssim": ssim(recon, test_x)}

  train_z = apply.embed(model, params, ds.train[:n_fit])
  test_z = apply.embed(model, params, test_x)
  out["active_units"] = active_units(test_z)
  out["latent_size"] = int(np.prod(test_z.shape[1:]))
  if model.latent == "grid":
    _, codes = jax.jit(functools.partial(model.apply, method="quantize"))({"params": params}, test_z)
    out.update(codebook_use(np.asarray(codes), model.num_codes))
  objective = objectives.get(config.objective)
  log_weights = objective.log_weights
  if log_weights is not None:
    n = len(test_x) if cfg.nll_examples is None else min(cfg.nll_examples, len(test_x))
    target = test_x[:n]
    if config.data.binarize == "dynamic":  # the eval's fixed binarisation of the test set
      target = np.asarray(transforms.binarize(eval_key, jnp.asarray(target), jnp.arange(n)))
    nll = importance_nll(log_weights(config, model.apply), params, target, jax.random.fold_in(eval_key, 1),
                         cfg.nll_samples)
    out.update(nll=float(np.mean(nll)), nll_samples=cfg.nll_samples, nll_examples=n)
    if objective.code_length is not None and objective.code_length(config):  # discrete data: bits
      out["nll_bits_per_dim"] = float(np.mean(losses.bits_per_dim(-nll, target)))

  if not ds.labelled:  # probes and the Fréchet classifier learn from labels
    out["labels"] = "none: no probe accuracies or Fréchet distance"
  else:
    train_y, test_y = ds.train.labels[:n_fit], ds.test.labels[:n_test]
    out["linear_probe_accuracy"] = linear_probe_accuracy(train_z, train_y, test_z, test_y)
    out["knn_accuracy"] = knn_accuracy(train_z, train_y, test_z, test_y)
    clf, clf_params = frechet.classifier(ds.train if len(ds.train) <= MAX_CLASSIFIER_EXAMPLES
                                         else ds.train.take(MAX_CLASSIFIER_EXAMPLES))
    z, how = sample_latents(model, cfg.num_samples, config.seed, train_z=train_z,
                            components=cfg.gmm_components)
    test_f = frechet.features(clf, clf_params, test_x)
    samples = apply.decode(model, params, z)
    out["frechet_distance"] = frechet.distance(frechet.features(clf, clf_params, samples), test_f)
    floor_n = min(len(test_x), len(ds.train))
    out["frechet_floor"] = frechet.distance(frechet.features(clf, clf_params, ds.train[:floor_n]), test_f)
    out["frechet_classifier_accuracy"] = frechet.accuracy(clf, clf_params, test_x, test_y)
    out["samples_from"] = how
  if ds.factors is not None and cfg.factor_metrics:
    out.update(factor_scores(model, params, ds.factors, jax.random.fold_in(eval_key, 3), cfg))
  out["final_eval_seconds"] = round(time.perf_counter() - t0, 1)
  return out


def factor_scores(model, params, factors: disentanglement.FactorData, key: jax.Array, cfg) -> dict:
  """The disentanglement scores of the encoder's output (the posterior mean for the VAE family) on
  images the source draws for sampled factors; deterministic given key."""
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).tolist())
  t0 = time.perf_counter()
  out = disentanglement.scores(factors, lambda x: apply.embed(model, params, x).reshape(len(x), -1), rng,
                               cfg.factor_points, cfg.factor_eval_points, cfg.factor_batch)
  return {**out, "factor_points": cfg.factor_points, "factor_eval_points": cfg.factor_eval_points,
          "factor_metrics_seconds": round(time.perf_counter() - t0, 1)}


COLLAPSE_FACTOR = 1e-3  # collapsed: the reconstructions' spread fell below 1/1000 of the untrained model's


def output_spread(model, params, x_NHWC: np.ndarray) -> float:
  """The per-pixel variance of the deterministic reconstructions across the examples x_NHWC, over that of
  the images themselves: how much the output depends on the input."""
  x = transforms.to_float(np.asarray(x_NHWC))
  spread_x = float(np.mean(np.var(x.astype(np.float64), axis=0)))
  recon = apply.reconstruct(model, params, x).astype(np.float64)
  return float(np.mean(np.var(recon, axis=0))) / spread_x if spread_x > 0 else 1.0


def health(model, params, x_NHWC: np.ndarray, mean_image_HWC: np.ndarray, init_spread: float) -> dict:
  """Whether training still works, from the deterministic reconstructions of a test sample x_NHWC.

  A model that collapsed (a learning rate far too high, say) answers every input
  alike while its loss stays finite: its `output_spread` falls to ~0 (exactly 0
  for dead ReLUs or saturated sigmoids), against ~1e-4 for an untrained model
  (init_spread, measured on the same sample) and ~1e-2 after one epoch of
  training. Beside it: `mean_image_mse`, the error of answering every input with
  the mean training image (the trivial baseline), and `param_norm`, the params'
  global L2 norm (it explodes with the learning rate).
  """
  x = transforms.to_float(np.asarray(x_NHWC))
  spread = output_spread(model, params, x)
  out = {"output_spread": spread, "mean_image_mse": float(np.mean(np.square(x - mean_image_HWC))),
         "param_norm": float(np.sqrt(sum(np.sum(np.square(np.asarray(p, np.float64)))
                                         for p in jax.tree.leaves(params)))),
         "collapsed": bool(spread < max(COLLAPSE_FACTOR * init_spread, 1e-12))}
  if out["collapsed"]:
    out["collapse_reason"] = (f"the reconstructions no longer depend on the input: their spread across "
                              f"{len(x)} test images is {spread:.2g} of the images' own, against "
                              f"{init_spread:.2g} before training (param norm {out['param_norm']:.3g})")
  return out
