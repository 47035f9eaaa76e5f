"""Your own objective, registered from outside ae_jax: a VAE whose KL has "free bits" (Kingma et al. 2016).

Each latent dimension's KL counts at least `free_bits.nats`, so the optimiser
gains nothing by pushing a dimension's KL below it (a guard against posterior
collapse). Use it with `--plugins=docs/examples/free_bits.py --config.objective=free_bits`,
or import this file from a config (docs/examples/config.py).
"""

import functools

import jax.numpy as jnp

from ae_jax import fields, objectives
from ae_jax.objectives import vae

FIELDS = (
    fields.Field("free_bits.nats", 0.5, fields.NON_NEGATIVE_NUMBER, fields.ALLOW,
                 "free_bits: the KL each latent dimension counts at least, in nats"),
)


def free_bits(params, batch, key, *, apply_fn, likelihood, scale, nats):
  """loss_B = -log p(x|z) + sum_d max(nats, KL_d), per example in nats."""
  keys_B = objectives.per_example_keys(key, batch["position"])
  parts, mean_BD, logvar_BD = vae.sample_parts(params, batch["input"], batch["image"], keys_B, 1,
                                               apply_fn=apply_fn, likelihood=likelihood, scale=scale)
  log_px_z = parts.log_px_z[:, 0]
  kl_BD = 0.5 * (jnp.square(mean_BD) + jnp.exp(logvar_BD) - 1.0 - logvar_BD)
  kl_B = jnp.sum(kl_BD, axis=-1)
  loss_B = -log_px_z + jnp.sum(jnp.maximum(nats, kl_BD), axis=-1)
  return loss_B, {"loss": loss_B, "mse": parts.mse[:, 0], "elbo": log_px_z - kl_B, "kl": kl_B,
                  "dims_below_free": jnp.sum(kl_BD < nats, axis=-1).astype(jnp.float32)}, {}


objectives.register("free_bits", objectives.Objective(
    bind=lambda c, apply_fn: functools.partial(free_bits, apply_fn=apply_fn, likelihood=c.vae.likelihood,
                                               scale=vae.scale_arg(c), nats=c.free_bits.nats),
    head=vae.head,  # a Gaussian posterior (and a learned scale for a Gaussian likelihood)
    fields=(*vae.LIKELIHOOD_FIELDS, *FIELDS),  # the vae.* likelihood fields are shared, declared once
    log_keys=("mse", "kl", "dims_below_free"),
    check=vae.check,
    log_weights=objectives.get("vae").log_weights))  # the same p(x, z) and q(z|x): the IS-NLL applies
