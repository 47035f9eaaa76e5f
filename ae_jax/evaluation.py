"""The end-of-run evaluation a paper reports (`eval.final`): one function per number, `final` for all.

For every model: the deterministic reconstruction's MSE, PSNR and SSIM on the
clean test set, active latent units, linear-probe and k-NN accuracy of the
latents, and the Fréchet distance (frechet.py) of decoded samples to the test
images, beside the train-vs-test floor. Samples come from the prior for a
Gaussian latent, else from a Gaussian mixture fitted to the training latents
(Ghosh et al. 2020). For a Gaussian latent also an importance-sampled NLL; for
a grid latent the codebook's perplexity and the codes used.
"""

import functools
import time

import dm_pix
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ae_jax import data, frechet, losses, objectives, probes

MAX_FIT_EXAMPLES = 10_000  # training latents for the probes and the mixture


def ssim(images_a: np.ndarray, images_b: np.ndarray, batch_size: int = 1000) -> float:
  """Mean SSIM (dm_pix: 11x11 Gaussian window, sigma 1.5) over image pairs in [0, 1]."""
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


@functools.partial(jax.jit, static_argnames=("apply_fn", "likelihood", "scale", "num_samples"))
def _log_weights(params, x_BHWC, position_B, key, *, apply_fn, likelihood, scale, num_samples):
  keys_B = jax.vmap(jax.random.fold_in, (None, 0))(key, position_B)
  parts, _, _ = objectives.sample_parts(params, x_BHWC, x_BHWC, keys_B, num_samples, apply_fn=apply_fn,
                                        likelihood=likelihood, scale=scale)
  return parts.log_px_z + parts.log_pz - parts.log_qz_x


def importance_nll(apply_fn, params, images_NHWC: np.ndarray, key: jax.Array, num_samples: int, *,
                   likelihood: str, scale, chunk: int = 50, batch_size: int = 100) -> np.ndarray:
  """-log p(x) per example, estimated with num_samples importance samples from q(z|x) (nats):
  -log (1/k) sum_j p(x, z_j) / q(z_j|x), the IWAE bound at k, drawn in chunks of `chunk`
  samples (chunk c of example i from fold_in(fold_in(key, c), i))."""
  out = []
  for start, x, valid in data.padded_batches(np.asarray(images_NHWC, np.float32), batch_size):
    position = jnp.arange(start, start + len(x))
    log_w = []
    for c, done in enumerate(range(0, num_samples, chunk)):
      log_w.append(_log_weights(params, x, position, jax.random.fold_in(key, c), apply_fn=apply_fn,
                                likelihood=likelihood, scale=scale,
                                num_samples=min(chunk, num_samples - done)))
    log_w = jnp.concatenate(log_w, axis=1)
    nll = -(jax.nn.logsumexp(log_w, axis=1) - jnp.log(num_samples))
    out.append(np.asarray(nll)[:valid])
  return np.concatenate(out)


def final(model, params, config: ml_collections.ConfigDict, ds: data.Dataset, eval_key: jax.Array) -> dict:
  """Every number of the comparison table for one trained model (see the module docstring)."""
  t0 = time.perf_counter()
  cfg = config.eval
  test_x, n_fit = ds.test_x, min(MAX_FIT_EXAMPLES, len(ds.train_x))
  recon = probes.reconstruct(model, params, test_x)
  mse = float(np.mean(np.square(recon - test_x)))
  out = {"det_recon_mse": mse, "det_recon_psnr": float(losses.psnr(mse)), "ssim": ssim(recon, test_x)}

  train_z = probes.embed(model, params, ds.train_x[:n_fit])
  test_z = probes.embed(model, params, test_x)
  out["active_units"] = active_units(test_z)
  out["latent_size"] = int(np.prod(test_z.shape[1:]))
  out["linear_probe_accuracy"] = probes.linear_probe_accuracy(train_z, ds.train_y[:n_fit], test_z, ds.test_y)
  out["knn_accuracy"] = probes.knn_accuracy(train_z, ds.train_y[:n_fit], test_z, ds.test_y)

  if model.latent == "grid":
    _, codes = jax.jit(functools.partial(model.apply, method="quantize"))({"params": params}, test_z)
    out.update(codebook_use(np.asarray(codes), model.num_codes))
  if model.latent == "gaussian":
    n = len(test_x) if cfg.nll_examples is None else min(cfg.nll_examples, len(test_x))
    target = test_x[:n]
    if config.data.binarize == "dynamic":  # the eval's fixed binarisation of the test set
      target = np.asarray(objectives.binarize(eval_key, jnp.asarray(target), jnp.arange(n)))
    nll = importance_nll(model.apply, params, target, jax.random.fold_in(eval_key, 1), cfg.nll_samples,
                         likelihood=config.vae.likelihood, scale=config.vae.scale)
    out.update(nll=float(np.mean(nll)), nll_samples=cfg.nll_samples, nll_examples=n)

  clf, clf_params = frechet.classifier(ds.train_x, ds.train_y)
  samples, how = probes.sample(model, params, cfg.num_samples, config.seed, train_z=train_z,
                               components=cfg.gmm_components)
  test_f = frechet.features(clf, clf_params, test_x)
  out["frechet_distance"] = frechet.distance(frechet.features(clf, clf_params, samples), test_f)
  floor_n = min(len(test_x), len(ds.train_x))
  out["frechet_floor"] = frechet.distance(frechet.features(clf, clf_params, ds.train_x[:floor_n]), test_f)
  out["frechet_classifier_accuracy"] = frechet.accuracy(clf, clf_params, test_x, ds.test_y)
  out["samples_from"] = how
  out["final_eval_seconds"] = round(time.perf_counter() - t0, 1)
  return out
