"""The pictures a run draws at each eval: reconstructions, denoising, samples from the prior."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from ae_jax import plots
from ae_jax.data import transforms
from ae_jax.models import apply


def save(workdir: str, model, params, test_split, corrupt, eval_key: jax.Array, n: int) -> None:
  """reconstructions.png; denoising.png for a corruption (the fixed eval noise); samples.png for a
  Gaussian latent (two rows of z ~ N(0, I))."""
  index = np.linspace(0, len(test_split) - 1, min(n, len(test_split))).astype(np.int32)
  x = transforms.to_float(np.asarray(test_split[index]))
  plots.image_rows(os.path.join(workdir, "reconstructions.png"), [x, apply.reconstruct(model, params, x)],
                   ["input", "reconstruction"], "clean test inputs and their reconstructions")
  if model.latent == "gaussian":
    prior = [np.asarray(jax.random.normal(jax.random.key(seed), (n, model.latent_dim))) for seed in range(2)]
    plots.image_rows(os.path.join(workdir, "samples.png"), [apply.decode(model, params, z) for z in prior],
                     ["prior", "prior"], "decoded samples z ~ N(0, I)")
  if corrupt is not None:
    noisy = np.asarray(transforms.corrupt_batch(corrupt, eval_key, jnp.asarray(x), index))
    plots.image_rows(os.path.join(workdir, "denoising.png"),
                     [x, noisy, apply.reconstruct(model, params, noisy)],
                     ["clean", "corrupted", "reconstructed"], "denoising (fixed eval noise)")
