"""Latent-variable models: the VAE (and beta-VAE) ELBO and the IWAE bound, in nats.

Per example the negative log-likelihood summed over pixels plus beta * KL,
averaged over the batch by the step; no hidden dataset-size or batch-size weights.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ae_jax import fields, losses
from ae_jax.models import Head
from ae_jax.objectives.objective import Objective, per_example_keys

LIKELIHOODS = ("bernoulli", "gaussian", "discretized_gaussian")
SCALED = ("gaussian", "discretized_gaussian")  # the likelihoods with a scale (learned or vae.scale)
SCALE_FITS = ("learned", "optimal", "ema")
_LOG_2PI = math.log(2 * math.pi)

LIKELIHOOD_FIELDS = (
    fields.Field("vae.likelihood", "bernoulli", fields.one_of(*LIKELIHOODS), fields.ALLOW,
                 "vae, iwae: p(x|z) from the decoder's logits; `gaussian`: a density, mean "
                 "sigmoid(logits); `discretized_gaussian`: the probability of each 8-bit value (its bin "
                 "of width 1/255, the end bins open), for bits/dim on colour images"),
    fields.Field("vae.scale", None, fields.optional(fields.POSITIVE_NUMBER), fields.NEVER,
                 "vae, iwae with a (discretized) gaussian likelihood: the pixels' std; None: fitted as "
                 "vae.scale_fit says", float),
    fields.Field("vae.scale_fit", "learned", fields.one_of(*SCALE_FITS), fields.NEVER,
                 "with vae.scale=None: `learned`, one param trained by the optimizer (at its pace, ~lr "
                 "per step); `optimal`, each example's maximum-likelihood std, sqrt of its MSE (sigma-VAE, "
                 "Rybkin et al. 2021), no param, gaussian only; `ema`, one std per channel set each step "
                 "to the RMS error of recent training batches (an EMA of vae.scale_decay), a param fit on "
                 "training data, so test bits/dim stay a code length"),
    fields.Field("vae.scale_decay", 0.99, fields.OPEN_FRACTION, fields.ALLOW,
                 "vae.scale_fit='ema': the decay of the squared-error EMA (it follows ~1/(1 - decay) steps)",
                 float),
)
VAE_FIELDS = (
    fields.Field("vae.beta", 1.0, fields.NON_NEGATIVE_NUMBER, fields.ALLOW,
                 "vae: weight of the KL term (beta-VAE for > 1)"),
    fields.Field("vae.kl_warmup_steps", 0, fields.NON_NEGATIVE, fields.ALLOW,
                 "vae: the KL weight ramps from 0 over these steps"),
)
IWAE_FIELDS = (
    fields.Field("vae.num_samples", 5, fields.POSITIVE, fields.ALLOW,
                 "iwae: importance samples k per example"),
)


def gaussian_kl(mean_BD: jax.Array, logvar_BD: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, I)) per example, in nats (closed form)."""
  return 0.5 * jnp.sum(jnp.square(mean_BD) + jnp.exp(logvar_BD) - 1.0 - logvar_BD, axis=-1)


def gaussian_log_density(z, mean, logvar):
  """log N(z; mean, exp(logvar)) summed over the last axis."""
  return -0.5 * jnp.sum(_LOG_2PI + logvar + jnp.square(z - mean) * jnp.exp(-logvar), axis=-1)


def _log_normal_mass(lo, hi):
  """log(Phi(hi) - Phi(lo)) for lo < hi, accurate in either tail (reflected to the lower one)."""
  upper = lo > 0
  a, b = jnp.where(upper, -hi, lo), jnp.where(upper, -lo, hi)
  log_b, log_a = jax.scipy.special.log_ndtr(b), jax.scipy.special.log_ndtr(a)
  return log_b + jnp.log(-jnp.expm1(jnp.minimum(log_a - log_b, -1e-30)))  # log(1 - e^m), exact near 0


def log_likelihood(likelihood: str, logits_NHWC: jax.Array, x_NHWC: jax.Array,
                   log_scale=None) -> jax.Array:
  """log p(x|z) per example, summed over pixels, in nats.

  `bernoulli`: the decoder's logits are Bernoulli logits (exact for binary x).
  `gaussian`: mean sigmoid(logits), scale exp(log_scale): one for all pixels, or one per channel.
  `discretized_gaussian`: the same Gaussian's mass on the bin of x's 8-bit value k
  = round(255 x), [(k - 1/2) / 255, (k + 1/2) / 255], the bins of 0 and 255 open to
  -inf and +inf, so that the 256
  values' probabilities sum to 1 (a likelihood in bits/dim, as reported for
  CIFAR-10 by PixelCNN, VDVAE and NVAE, with a Gaussian in place of their logistic).
  """
  if likelihood == "bernoulli":
    per_pixel = -optax.sigmoid_binary_cross_entropy(logits_NHWC, x_NHWC)
  elif likelihood == "gaussian":
    mean = jax.nn.sigmoid(logits_NHWC)
    per_pixel = (-0.5 * jnp.square((x_NHWC - mean) * jnp.exp(-log_scale)) - log_scale
                 - 0.5 * _LOG_2PI)
  else:
    mean, inv_scale = jax.nn.sigmoid(logits_NHWC), jnp.exp(-log_scale)
    k = jnp.round(x_NHWC * 255)  # the 8-bit value; a bin's upper edge is bitwise its neighbour's lower one
    lo = jnp.where(k <= 0, -jnp.inf, ((k - 0.5) / 255 - mean) * inv_scale)
    hi = jnp.where(k >= 255, jnp.inf, ((k + 0.5) / 255 - mean) * inv_scale)
    per_pixel = _log_normal_mass(lo, hi)
  return jnp.sum(per_pixel.reshape(per_pixel.shape[0], -1), axis=-1)


class VaeParts(NamedTuple):
  """Samples from q(z|x) per example: what the ELBO, the IWAE bound and the NLL are made of."""

  log_px_z: jax.Array  # [B, k] log p(x|z)
  log_pz: jax.Array  # [B, k] log p(z)
  log_qz_x: jax.Array  # [B, k] log q(z|x)
  mse: jax.Array  # [B, k] of the decoder's mean
  sq_err_BC: jax.Array | None = None  # squared errors of the decoder's mean summed over pixels, mean over k
  z_BKD: jax.Array | None = None  # the samples


MIN_OPTIMAL_SCALE = 1e-3  # vae.scale_fit='optimal': a perfect reconstruction must not give -inf


def _log_scale(likelihood: str, params, scale, logits_NHWC, x_NHWC):
  """log sigma: fixed (a number), the learned param (None), each example's optimum ('optimal') or
  the per-channel param that scale_ema sets ('ema': no gradient)."""
  if likelihood not in SCALED:
    return None
  if scale == "optimal":  # sigma-VAE: argmax_sigma of the Gaussian likelihood is the RMS error
    mse_N = jnp.mean(jnp.square(jax.nn.sigmoid(logits_NHWC) - x_NHWC), axis=(1, 2, 3), keepdims=True)
    return jax.lax.stop_gradient(0.5 * jnp.log(jnp.maximum(mse_N, MIN_OPTIMAL_SCALE**2)))
  if scale == "ema":
    return jax.lax.stop_gradient(params["log_scale"])
  return params["log_scale"] if scale is None else jnp.log(jnp.asarray(scale, jnp.float32))


def scale_arg(c):
  """What the bound functions take as `scale`: vae.scale, or vae.scale_fit's 'optimal' or 'ema'."""
  return c.vae.scale_fit if c.vae.scale is None and c.vae.scale_fit != "learned" else c.vae.scale


def scale_stats(parts: VaeParts, scale, x_BHWC: jax.Array) -> dict:
  """What scale_ema needs (summed over the global batch by the train step), for scale='ema'."""
  if scale != "ema":
    return {}
  pixels_B = jnp.full(x_BHWC.shape[:1], x_BHWC.shape[1] * x_BHWC.shape[2], jnp.float32)
  return {"scale_sq_err": jax.lax.stop_gradient(parts.sq_err_BC), "scale_pixels": pixels_B}


class ScaleEmaState(NamedTuple):
  sq_err_C: jax.Array  # EMA of the squared errors per channel, summed over pixels and examples
  pixels: jax.Array  # EMA of the number of pixels they sum over


def scale_ema(decay: float) -> optax.GradientTransformationExtraArgs:
  """Replaces the update of params['log_scale'] (per channel) by log sqrt(EMA of squared error / EMA
  of pixel count) over the training batches (`scale_sq_err`, `scale_pixels`): the maximum-likelihood
  std of a Gaussian, fit in closed form as the VQ-VAE's EMA codebook is. Starts as one pseudo-pixel
  of squared error exp(2 log_scale) per channel, which the first batch outweighs."""
  def init(params):
    return ScaleEmaState(jnp.exp(2 * params["log_scale"]), jnp.ones((), jnp.float32))

  def update(updates, state, params, *, scale_sq_err=None, scale_pixels=None, **extra):
    del extra
    if scale_sq_err is None:  # called without statistics (e.g. an optimizer test): leave the scale
      return updates, state
    sq = decay * state.sq_err_C + (1 - decay) * scale_sq_err
    pixels = decay * state.pixels + (1 - decay) * scale_pixels
    log_scale = 0.5 * jnp.log(jnp.maximum(sq / pixels, MIN_OPTIMAL_SCALE**2))
    return {**updates, "log_scale": log_scale - params["log_scale"]}, ScaleEmaState(sq, pixels)

  return optax.GradientTransformationExtraArgs(init, update)


def sample_parts(params, x_BHWC: jax.Array, target_BHWC: jax.Array, keys_B: jax.Array, num_samples: int,
                 *, apply_fn, likelihood: str, scale) -> tuple[VaeParts, jax.Array, jax.Array]:
  """(parts [B, k], mean_BD, logvar_BD): k reparameterised samples z = mean + exp(logvar/2) eps
  per example, eps from that example's key, each decoded once (one batch of B*k)."""
  mean_BD, logvar_BD = apply_fn({"params": params}, x_BHWC, method="posterior")
  b, d = mean_BD.shape
  eps_BKD = jax.vmap(lambda k: jax.random.normal(k, (num_samples, d)))(keys_B)
  z_BKD = mean_BD[:, None] + jnp.exp(0.5 * logvar_BD)[:, None] * eps_BKD
  logits = apply_fn({"params": params}, z_BKD.reshape(b * num_samples, d), method="decode_logits")
  target = jnp.repeat(target_BHWC, num_samples, axis=0)
  log_scale = _log_scale(likelihood, params, scale, logits, target)
  log_px_z = log_likelihood(likelihood, logits, target, log_scale).reshape(b, num_samples)
  sq_err = jnp.square(jax.nn.sigmoid(logits) - target)
  mse = jnp.mean(sq_err.reshape(b * num_samples, -1), -1)
  sq_err_BC = jnp.mean(jnp.sum(sq_err, axis=(1, 2)).reshape(b, num_samples, -1), axis=1)
  log_pz = gaussian_log_density(z_BKD, 0.0, jnp.zeros_like(z_BKD))
  log_qz_x = gaussian_log_density(z_BKD, mean_BD[:, None], logvar_BD[:, None])
  return (VaeParts(log_px_z, log_pz, log_qz_x, mse.reshape(b, num_samples), sq_err_BC, z_BKD),
          mean_BD, logvar_BD)


def kl_weight(beta: float, warmup_steps: int, step) -> jax.Array:
  """beta, ramped linearly from 0 over the first warmup_steps steps (step None: warm-up over)."""
  if step is None or warmup_steps == 0:
    return jnp.asarray(beta, jnp.float32)
  return beta * jnp.minimum(1.0, step.astype(jnp.float32) / warmup_steps)


class OneSample(NamedTuple):
  """One reparameterised sample per example, and what an ELBO is made of."""

  parts: VaeParts
  log_px_z_B: jax.Array
  kl_B: jax.Array  # KL(q(z|x) || p(z)), closed form
  z_BD: jax.Array
  mean_BD: jax.Array
  logvar_BD: jax.Array


def one_sample(params, batch: dict, key: jax.Array, *, apply_fn, likelihood: str, scale) -> OneSample:
  """z ~ q(z|batch['input']) from fold_in(key, position), log p(batch['image']|z) and the KL."""
  keys_B = per_example_keys(key, batch["position"])
  parts, mean_BD, logvar_BD = sample_parts(params, batch["input"], batch["image"], keys_B, 1,
                                           apply_fn=apply_fn, likelihood=likelihood, scale=scale)
  return OneSample(parts, parts.log_px_z[:, 0], gaussian_kl(mean_BD, logvar_BD), parts.z_BKD[:, 0],
                   mean_BD, logvar_BD)


def elbo_metrics(s: OneSample, loss_B: jax.Array, likelihood: str, x_BHWC: jax.Array) -> dict:
  """The per-example metrics of every one-sample VAE objective: loss, mse, the beta = 1 ELBO, KL."""
  metrics = {"loss": loss_B, "mse": s.parts.mse[:, 0], "elbo": s.log_px_z_B - s.kl_B, "kl": s.kl_B,
             "log_px_z": s.log_px_z_B}
  if likelihood == "discretized_gaussian":
    metrics["bits_per_dim"] = losses.bits_per_dim(s.log_px_z_B - s.kl_B, x_BHWC)  # of the ELBO: a bound
  return metrics


def vae(params, batch: dict, key: jax.Array, *, apply_fn, likelihood: str, scale, beta: float,
        kl_warmup_steps: int):
  """Gaussian q(z|x), N(0, I) prior, one reparameterised sample per example (Kingma & Welling 2014).

  loss_B = -log p(x|z) + beta_t * KL(q(z|x) || p(z)) in nats (sums over pixels
  and latent dims); beta_t ramps from 0 to beta over kl_warmup_steps (beta > 1:
  the beta-VAE of Higgins et al. 2017). `elbo` is the beta = 1 bound.
  """
  s = one_sample(params, batch, key, apply_fn=apply_fn, likelihood=likelihood, scale=scale)
  loss_B = -s.log_px_z_B + kl_weight(beta, kl_warmup_steps, batch.get("step")) * s.kl_B
  return loss_B, elbo_metrics(s, loss_B, likelihood, batch["image"]), scale_stats(s.parts, scale,
                                                                                   batch["image"])


def iwae_bound(parts: VaeParts) -> jax.Array:
  """log (1/k) sum_j p(x, z_j) / q(z_j|x) per example: the k-sample importance-weighted bound.

  With k = 1 it is the one-sample (Monte-Carlo KL) ELBO; as k grows it tightens
  to log p(x): the same estimator gives the importance-sampled NLL.
  """
  log_w = parts.log_px_z + parts.log_pz - parts.log_qz_x
  return jax.nn.logsumexp(log_w, axis=-1) - jnp.log(log_w.shape[-1])


def iwae(params, batch: dict, key: jax.Array, *, apply_fn, likelihood: str, scale, num_samples: int):
  """The importance-weighted autoencoder (Burda et al. 2016): loss_B = -iwae_bound with k samples."""
  keys_B = per_example_keys(key, batch["position"])
  parts, mean_BD, logvar_BD = sample_parts(params, batch["input"], batch["image"], keys_B, num_samples,
                                           apply_fn=apply_fn, likelihood=likelihood, scale=scale)
  bound_B = iwae_bound(parts)
  kl_B = gaussian_kl(mean_BD, logvar_BD)
  return -bound_B, {"loss": -bound_B, "mse": parts.mse[:, 0], "iwae_bound": bound_B, "kl": kl_B,
                    "elbo": parts.log_px_z[:, 0] - kl_B}, scale_stats(parts, scale, batch["image"])


def log_weights(params, x_BHWC, position_B, key, num_samples: int, *, apply_fn, likelihood: str, scale):
  """[B, k] log p(x, z_j) - log q(z_j|x), z_j ~ q(z|x) from fold_in(key, position_B[b])."""
  parts, _, _ = sample_parts(params, x_BHWC, x_BHWC, per_example_keys(key, position_B), num_samples,
                             apply_fn=apply_fn, likelihood=likelihood, scale=scale)
  return parts.log_px_z + parts.log_pz - parts.log_qz_x


def head(c) -> Head:
  """A Gaussian posterior; a scale param for a Gaussian likelihood without a fixed one (per channel
  for scale_fit='ema')."""
  param = c.vae.likelihood in SCALED and c.vae.scale is None and c.vae.scale_fit != "optimal"
  return Head("gaussian", learned_scale=param, per_channel_scale=param and c.vae.scale_fit == "ema")


def transform(c):
  return scale_ema(c.vae.scale_decay) if scale_arg(c) == "ema" else None


def check(c) -> None:
  if c.vae.scale is not None and c.vae.likelihood not in SCALED:
    raise ValueError(f"vae.scale={c.vae.scale!r}: only vae.likelihood='gaussian' or 'discretized_gaussian' "
                     f"has a scale (vae.likelihood={c.vae.likelihood!r}); leave it None")
  if c.vae.scale_fit != "learned" and (c.vae.scale is not None or c.vae.likelihood not in SCALED):
    raise ValueError(f"vae.scale_fit={c.vae.scale_fit!r}: fits the scale of a (discretized) gaussian "
                     f"likelihood with vae.scale=None (vae.likelihood={c.vae.likelihood!r}, "
                     f"vae.scale={c.vae.scale!r})")
  if c.vae.scale_fit == "optimal" and c.vae.likelihood != "gaussian":
    raise ValueError("vae.scale_fit='optimal': fits the scale of vae.likelihood='gaussian' only (a scale "
                     "taken from x itself would make the discretized likelihood's bits/dim no code length); "
                     "use vae.scale_fit='ema', fit on the training batches")


def discrete(c) -> bool:
  """Whether p(x|z) is a probability of discrete data: 8-bit values, or binarised pixels."""
  return c.vae.likelihood == "discretized_gaussian" or (c.vae.likelihood == "bernoulli"
                                                        and c.data.binarize != "none")


def bind_log_weights(c, apply_fn):
  return functools.partial(log_weights, apply_fn=apply_fn, likelihood=c.vae.likelihood, scale=scale_arg(c))


VAE = Objective(
    lambda c, apply_fn: functools.partial(vae, apply_fn=apply_fn, likelihood=c.vae.likelihood,
                                          scale=scale_arg(c), beta=c.vae.beta,
                                          kl_warmup_steps=c.vae.kl_warmup_steps),
    head=head, fields=(*LIKELIHOOD_FIELDS, *VAE_FIELDS), log_keys=("mse", "elbo", "kl"), check=check,
    transform=transform,
    log_weights=bind_log_weights, code_length=discrete, module=__name__)
IWAE = Objective(
    lambda c, apply_fn: functools.partial(iwae, apply_fn=apply_fn, likelihood=c.vae.likelihood,
                                          scale=scale_arg(c), num_samples=c.vae.num_samples),
    head=head, fields=(*LIKELIHOOD_FIELDS, *IWAE_FIELDS), log_keys=("mse", "iwae_bound", "kl"), check=check,
    transform=transform,
    log_weights=bind_log_weights, code_length=discrete, module=__name__)
