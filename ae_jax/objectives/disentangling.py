"""VAEs that target disentanglement with a regulariser on q(z): β-TCVAE, DIP-VAE-I/II, AnnealedVAE.

Each is the one-sample Gaussian VAE (vae.py, its likelihoods) with the
regulariser of disentanglement_lib (`methods/unsupervised/vae.py`; Locatello et
al. 2019), in nats per example. β-TCVAE and DIP-VAE estimate a statistic of the
aggregate posterior from the batch, and AnnealedVAE takes the batch's mean KL,
so they are `coupled`: under pmap they gather the global batch, and a run is the
same on any device count. In the eval the statistics are of each eval batch's
valid examples (batch['mask']).
"""

import functools
import math

import jax
import jax.numpy as jnp

from ae_jax import fields
from ae_jax.objectives import vae
from ae_jax.objectives.objective import Objective, batch_weights, global_batch

DIP_KINDS = ("i", "ii")
_LOG_2PI = math.log(2 * math.pi)

TCVAE_FIELDS = (
    fields.Field("beta_tcvae.beta", 6.0, fields.NON_NEGATIVE_NUMBER, fields.ALLOW,
                 "beta_tcvae: the weight of the total correlation (the ELBO's, beta - 1 added to it)"),
)
DIP_FIELDS = (
    fields.Field("dip_vae.kind", "i", fields.one_of(*DIP_KINDS), fields.ALLOW,
                 "dip_vae: `i`, the covariance of the posterior means; `ii`, of the aggregate posterior "
                 "(plus the mean posterior variance)"),
    fields.Field("dip_vae.lambda_od", 10.0, fields.NON_NEGATIVE_NUMBER, fields.ALLOW,
                 "dip_vae: the weight of the off-diagonal covariances squared"),
    fields.Field("dip_vae.lambda_d", None, fields.optional(fields.NON_NEGATIVE_NUMBER), fields.ALLOW,
                 "dip_vae: the weight of (diagonal - 1) squared; None: 10 lambda_od for `i`, lambda_od for "
                 "`ii` (disentanglement_lib's lambda_d_factor)", float),
)
ANNEALED_FIELDS = (
    fields.Field("annealed_vae.gamma", 1000.0, fields.NON_NEGATIVE_NUMBER, fields.ALLOW,
                 "annealed_vae: the weight of |KL - C|"),
    fields.Field("annealed_vae.c_max", 25.0, fields.NON_NEGATIVE_NUMBER, fields.ALLOW,
                 "annealed_vae: the final capacity C in nats"),
    fields.Field("annealed_vae.ramp_steps", 100_000, fields.POSITIVE, fields.ALLOW,
                 "annealed_vae: C grows linearly from 0 to c_max over these steps (the eval uses c_max)"),
)


def total_correlation(z_BD: jax.Array, mean_MD: jax.Array, logvar_MD: jax.Array,
                      weight_M: jax.Array) -> jax.Array:
  """Per example, log q(z) - sum_d log q(z_d) with q(z) ~ (1/M) sum_j q(z | x_j) over the batch's M
  examples (Chen et al. 2018's minibatch-weighted sampling, as disentanglement_lib computes it: the
  constant (D - 1) log(N M) dropped, so the value is a TC up to that constant and moves no gradient)."""
  log_q_BMD = -0.5 * (_LOG_2PI + logvar_MD[None] + jnp.square(z_BD[:, None] - mean_MD[None])
                      * jnp.exp(-logvar_MD[None]))
  log_w_M = jnp.log(weight_M)  # -inf drops an example
  log_qz_B = jax.nn.logsumexp(jnp.sum(log_q_BMD, axis=-1) + log_w_M, axis=1)
  log_qz_product_B = jnp.sum(jax.nn.logsumexp(log_q_BMD + log_w_M[None, :, None], axis=1), axis=-1)
  return log_qz_B - log_qz_product_B


def beta_tcvae(params, batch: dict, key: jax.Array, *, apply_fn, likelihood: str, scale, beta: float,
               axis_name=None):
  """β-TCVAE (Chen et al. 2018): loss_B = -log p(x|z) + KL + (beta - 1) TC, the total correlation of
  q(z) estimated per example against the global batch's posteriors."""
  s = vae.one_sample(params, batch, key, apply_fn=apply_fn, likelihood=likelihood, scale=scale)
  local = (s.mean_BD, s.logvar_BD, batch_weights(batch, len(s.z_BD)))
  (mean_MD, logvar_MD, weight_M), _ = global_batch(local, axis_name)
  tc_B = total_correlation(s.z_BD, mean_MD, logvar_MD, weight_M)
  loss_B = -s.log_px_z_B + s.kl_B + (beta - 1.0) * tc_B
  return (loss_B, {**vae.elbo_metrics(s, loss_B, likelihood, batch["image"]), "tc_mws": tc_B},
          vae.scale_stats(s.parts, scale, batch["image"]))


def dip_regularizer(mean_MD: jax.Array, logvar_MD: jax.Array, weight_M: jax.Array, kind: str,
                    lambda_od: float, lambda_d: float) -> jax.Array:
  """lambda_od sum_{i != j} C_ij^2 + lambda_d sum_i (C_ii - 1)^2 of C, the (biased) covariance over the
  batch of the posterior means (`i`), plus the mean posterior variance on the diagonal (`ii`)."""
  w = weight_M / jnp.sum(weight_M)
  mu = jnp.sum(w[:, None] * mean_MD, axis=0)
  cov = jnp.einsum("m,mi,mj->ij", w, mean_MD, mean_MD) - jnp.outer(mu, mu)
  if kind == "ii":
    cov = cov + jnp.diag(jnp.sum(w[:, None] * jnp.exp(logvar_MD), axis=0))
  diag = jnp.diagonal(cov)
  off = cov - jnp.diag(diag)
  return lambda_od * jnp.sum(jnp.square(off)) + lambda_d * jnp.sum(jnp.square(diag - 1.0))


def dip_vae(params, batch: dict, key: jax.Array, *, apply_fn, likelihood: str, scale, kind: str,
            lambda_od: float, lambda_d: float, axis_name=None):
  """DIP-VAE-I/II (Kumar et al. 2018): loss_B = -log p(x|z) + KL + the global batch's DIP regulariser
  (one number, added to each example's loss so that their mean is the objective)."""
  s = vae.one_sample(params, batch, key, apply_fn=apply_fn, likelihood=likelihood, scale=scale)
  local = (s.mean_BD, s.logvar_BD, batch_weights(batch, len(s.z_BD)))
  (mean_MD, logvar_MD, weight_M), _ = global_batch(local, axis_name)
  dip_B = jnp.broadcast_to(dip_regularizer(mean_MD, logvar_MD, weight_M, kind, lambda_od, lambda_d),
                           s.kl_B.shape)
  loss_B = -s.log_px_z_B + s.kl_B + dip_B
  return (loss_B, {**vae.elbo_metrics(s, loss_B, likelihood, batch["image"]), "dip_regularizer": dip_B},
          vae.scale_stats(s.parts, scale, batch["image"]))


def capacity(c_max: float, ramp_steps: int, step) -> jax.Array:
  """C at `step`: c_max * step / ramp_steps up to c_max (step None, the eval: c_max)."""
  if step is None:
    return jnp.asarray(c_max, jnp.float32)
  return jnp.minimum(c_max * step.astype(jnp.float32) / ramp_steps, c_max)


def annealed_vae(params, batch: dict, key: jax.Array, *, apply_fn, likelihood: str, scale, gamma: float,
                 c_max: float, ramp_steps: int, axis_name=None):
  """AnnealedVAE (Burgess et al. 2018): loss = -log p(x|z) + gamma |KL - C|, the capacity C ramped
  from 0 to c_max; the KL is the global batch's mean, as disentanglement_lib has it."""
  s = vae.one_sample(params, batch, key, apply_fn=apply_fn, likelihood=likelihood, scale=scale)
  (kl_M, weight_M), _ = global_batch((s.kl_B, batch_weights(batch, len(s.z_BD))), axis_name)
  mean_kl = jnp.sum(weight_M * kl_M) / jnp.sum(weight_M)
  penalty_B = jnp.broadcast_to(gamma * jnp.abs(mean_kl - capacity(c_max, ramp_steps, batch.get("step"))),
                               s.kl_B.shape)
  loss_B = -s.log_px_z_B + penalty_B
  return (loss_B, {**vae.elbo_metrics(s, loss_B, likelihood, batch["image"]), "capacity_penalty": penalty_B},
          vae.scale_stats(s.parts, scale, batch["image"]))


def _vae_kwargs(c, apply_fn) -> dict:
  return dict(apply_fn=apply_fn, likelihood=c.vae.likelihood, scale=vae.scale_arg(c))


def lambda_d(c) -> float:
  """dip_vae.lambda_d, or disentanglement_lib's default for the kind."""
  if c.dip_vae.lambda_d is not None:
    return c.dip_vae.lambda_d
  return c.dip_vae.lambda_od * (10.0 if c.dip_vae.kind == "i" else 1.0)


_LATENT = dict(head=vae.head, check=vae.check, transform=vae.transform, log_weights=vae.bind_log_weights,
               code_length=vae.discrete, module=__name__, coupled=True)
BETA_TCVAE = Objective(
    lambda c, apply_fn: functools.partial(beta_tcvae, beta=c.beta_tcvae.beta, **_vae_kwargs(c, apply_fn)),
    fields=(*vae.LIKELIHOOD_FIELDS, *TCVAE_FIELDS), log_keys=("mse", "kl", "tc_mws"), **_LATENT)
DIP_VAE = Objective(
    lambda c, apply_fn: functools.partial(dip_vae, kind=c.dip_vae.kind, lambda_od=c.dip_vae.lambda_od,
                                          lambda_d=lambda_d(c), **_vae_kwargs(c, apply_fn)),
    fields=(*vae.LIKELIHOOD_FIELDS, *DIP_FIELDS), log_keys=("mse", "kl", "dip_regularizer"), **_LATENT)
ANNEALED_VAE = Objective(
    lambda c, apply_fn: functools.partial(annealed_vae, gamma=c.annealed_vae.gamma,
                                          c_max=c.annealed_vae.c_max, ramp_steps=c.annealed_vae.ramp_steps,
                                          **_vae_kwargs(c, apply_fn)),
    fields=(*vae.LIKELIHOOD_FIELDS, *ANNEALED_FIELDS), log_keys=("mse", "kl", "capacity_penalty"),
    **_LATENT)
