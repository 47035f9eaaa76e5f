"""What the train step minimises: one pure function per objective, chosen by `config.objective`.

An objective is `objective(params, batch, key) -> (loss_B, metrics_B)`: per-example
values, which the train step averages over the batch (and the devices) and the
eval step sums over the valid examples of a padded batch. `batch['input']` is
what the encoder sees (corrupted, for denoising: the step corrupts, so every
objective composes with every corruption), `batch['image']` the clean target,
`batch['position']` each example's index in the global batch, and in training
`batch['step']` the step being taken (for warm-ups; absent in eval, which
means "warm-up over"). `key` is this step's objective key: derive per-example
keys as `jax.random.fold_in(key, batch['position'][b])`, so draws depend only
on (seed, step, global example index), never on the device count.

An objective may also return `metrics_B[OPTIMIZER_ARGS]`, a dict of per-example
statistics: the train step sums them over the global batch and passes them to
the optimizer's update as extra arguments (the VQ-VAE's EMA codebook,
`vq_ema`); they are not logged.

Units: `ae`, `sparse`, `contractive` and `vqvae` keep the reference's loss (the
`loss` field, a mean over pixels, as Keras), so `ae` gives the reference's
numbers to the bit. `vae` and `iwae` are in nats: per example the negative
log-likelihood summed over pixels plus beta * KL, averaged over the batch by
the step; no hidden dataset-size or batch-size weights.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ae_jax import losses

NAMES = ("ae", "vae", "iwae", "sparse", "contractive", "vqvae")
LIKELIHOODS = ("bernoulli", "gaussian")
SPARSE_PENALTIES = ("l1", "kl")
OPTIMIZER_ARGS = "optimizer_args"
# Objective keys are fold_in(step_key, OBJECTIVE_STREAM): per-example noise keys are
# fold_in(step_key, index) with index < 2**32 - 2, so the streams never meet, and
# the noise stays what it was before objectives had keys of their own.
OBJECTIVE_STREAM = 2**32 - 1
BINARIZE_STREAM = 2**32 - 2
_LOG_2PI = math.log(2 * math.pi)


def split_step_key(step_key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(noise_key, objective_key) of one step (or of the eval)."""
  return step_key, jax.random.fold_in(step_key, OBJECTIVE_STREAM)


def binarize(step_key: jax.Array, x_BHWC: jax.Array, index_B: jax.Array) -> jax.Array:
  """Bernoulli(x) per pixel, example b with fold_in(fold_in(step_key, BINARIZE_STREAM), index_B[b]).

  Dynamic binarisation in training (a new draw every step); with the eval key,
  the one fixed binarisation of the test set.
  """
  keys_B = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.fold_in(step_key, BINARIZE_STREAM),
                                                   index_B)
  draw = jax.vmap(lambda k, x: jax.random.bernoulli(k, x).astype(x.dtype))
  return draw(keys_B, x_BHWC)


def _per_example_keys(key: jax.Array, position_B: jax.Array) -> jax.Array:
  return jax.vmap(jax.random.fold_in, (None, 0))(key, position_B)


# --- deterministic autoencoders ------------------------------------------------------------

def _reconstruction(apply_fn, params, batch: dict, loss: str, z=None):
  """(loss_B, mse_B, z) for the reference's reconstruction loss; z = encode(input) unless given."""
  if z is None:
    z = apply_fn({"params": params}, batch["input"], method="encode")
  logits_BHWC = apply_fn({"params": params}, z, method="decode_logits")
  x_BHWC = batch["image"]
  loss_B = jax.vmap(functools.partial(losses.reconstruction_loss, loss))(logits_BHWC, x_BHWC)
  return loss_B, jax.vmap(losses.mse)(jax.nn.sigmoid(logits_BHWC), x_BHWC), z


def reconstruction(params, batch: dict, key: jax.Array, *, apply_fn, loss: str):
  """The autoencoder: decoder(encoder(input)) against the clean image.

  loss_B is per example the mean over pixels of `loss` (Keras's `mse` or
  `binary_crossentropy`, as in the reference), from the decoder's logits.
  """
  del key  # deterministic
  logits_BHWC = apply_fn({"params": params}, batch["input"], method="logits")
  x_BHWC = batch["image"]
  loss_B = jax.vmap(functools.partial(losses.reconstruction_loss, loss))(logits_BHWC, x_BHWC)
  mse_B = jax.vmap(losses.mse)(jax.nn.sigmoid(logits_BHWC), x_BHWC)
  return loss_B, {"loss": loss_B, "mse": mse_B}


def sparse(params, batch: dict, key: jax.Array, *, apply_fn, loss: str, penalty: str, weight: float,
           target: float):
  """Reconstruction + weight * a sparsity penalty on the latent activations z_BD.

  `l1`: sum_d |z_d|. `kl`: sum_d KL(target || sigmoid(z_d)), each example's
  sigmoid activations pulled towards the rate `target`. (The classic penalty
  uses the batch's mean activation; a per-example one keeps the loss, and so
  the run, independent of how the batch is split across devices.)
  """
  del key
  recon_B, mse_B, z_BD = _reconstruction(apply_fn, params, batch, loss)
  if penalty == "l1":
    penalty_B = jnp.sum(jnp.abs(z_BD), axis=-1)
  else:
    rate = jax.nn.sigmoid(z_BD)
    penalty_B = jnp.sum(target * (jnp.log(target) - jnp.log(rate))
                        + (1 - target) * (jnp.log1p(-target) - jnp.log1p(-rate)), axis=-1)
  loss_B = recon_B + weight * penalty_B
  return loss_B, {"loss": loss_B, "mse": mse_B, "recon_loss": recon_B, "sparsity": penalty_B}


def contractive_penalty(encode_one, x_HWC: jax.Array) -> jax.Array:
  """||dz/dx||_F^2 of one example, exact (reverse mode: one pass per latent dimension)."""
  return jnp.sum(jnp.square(jax.jacrev(encode_one)(x_HWC)))


def contractive(params, batch: dict, key: jax.Array, *, apply_fn, loss: str, weight: float):
  """Reconstruction + weight * the squared Frobenius norm of the encoder's Jacobian at the input
  (Rifai et al. 2011), computed exactly with autodiff."""
  del key

  def encode_one(x_HWC):
    return apply_fn({"params": params}, x_HWC[None], method="encode")[0]

  recon_B, mse_B, _ = _reconstruction(apply_fn, params, batch, loss)
  penalty_B = jax.vmap(functools.partial(contractive_penalty, encode_one))(batch["input"])
  loss_B = recon_B + weight * penalty_B
  return loss_B, {"loss": loss_B, "mse": mse_B, "recon_loss": recon_B, "jacobian_fro2": penalty_B}


# --- latent-variable models ------------------------------------------------------------------

def gaussian_kl(mean_BD: jax.Array, logvar_BD: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, I)) per example, in nats (closed form)."""
  return 0.5 * jnp.sum(jnp.square(mean_BD) + jnp.exp(logvar_BD) - 1.0 - logvar_BD, axis=-1)


def gaussian_log_density(z, mean, logvar):
  """log N(z; mean, exp(logvar)) summed over the last axis."""
  return -0.5 * jnp.sum(_LOG_2PI + logvar + jnp.square(z - mean) * jnp.exp(-logvar), axis=-1)


def log_likelihood(likelihood: str, logits_NHWC: jax.Array, x_NHWC: jax.Array,
                   log_scale=None) -> jax.Array:
  """log p(x|z) per example, summed over pixels, in nats.

  `bernoulli`: the decoder's logits are Bernoulli logits (exact for binary x).
  `gaussian`: mean sigmoid(logits), one scale exp(log_scale) for all pixels.
  """
  if likelihood == "bernoulli":
    per_pixel = -optax.sigmoid_binary_cross_entropy(logits_NHWC, x_NHWC)
  else:
    mean = jax.nn.sigmoid(logits_NHWC)
    per_pixel = (-0.5 * jnp.square((x_NHWC - mean) * jnp.exp(-log_scale)) - log_scale
                 - 0.5 * _LOG_2PI)
  return jnp.sum(per_pixel.reshape(per_pixel.shape[0], -1), axis=-1)


class VaeParts(NamedTuple):
  """One posterior sample per example: what the ELBO, the IWAE bound and the NLL are made of."""

  log_px_z: jax.Array  # [B] log p(x|z)
  log_pz: jax.Array  # [B] log p(z)
  log_qz_x: jax.Array  # [B] log q(z|x)
  mse: jax.Array  # [B] of the decoder's mean


def _log_scale(likelihood: str, params, scale):
  if likelihood != "gaussian":
    return None
  return params["log_scale"] if scale is None else jnp.log(jnp.asarray(scale, jnp.float32))


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
  log_scale = _log_scale(likelihood, params, scale)
  log_px_z = log_likelihood(likelihood, logits, target, log_scale).reshape(b, num_samples)
  mse = jnp.mean(jnp.square(jax.nn.sigmoid(logits) - target).reshape(b * num_samples, -1), -1)
  log_pz = gaussian_log_density(z_BKD, 0.0, jnp.zeros_like(z_BKD))
  log_qz_x = gaussian_log_density(z_BKD, mean_BD[:, None], logvar_BD[:, None])
  return VaeParts(log_px_z, log_pz, log_qz_x, mse.reshape(b, num_samples)), mean_BD, logvar_BD


def kl_weight(beta: float, warmup_steps: int, step) -> jax.Array:
  """beta, ramped linearly from 0 over the first warmup_steps steps (step None: warm-up over)."""
  if step is None or warmup_steps == 0:
    return jnp.asarray(beta, jnp.float32)
  return beta * jnp.minimum(1.0, step.astype(jnp.float32) / warmup_steps)


def vae(params, batch: dict, key: jax.Array, *, apply_fn, likelihood: str, scale, beta: float,
        kl_warmup_steps: int):
  """Gaussian q(z|x), N(0, I) prior, one reparameterised sample per example (Kingma & Welling 2014).

  loss_B = -log p(x|z) + beta_t * KL(q(z|x) || p(z)) in nats (sums over pixels
  and latent dims); beta_t ramps from 0 to beta over kl_warmup_steps (beta > 1:
  the beta-VAE of Higgins et al. 2017). `elbo` is the beta = 1 bound.
  """
  keys_B = _per_example_keys(key, batch["position"])
  parts, mean_BD, logvar_BD = sample_parts(params, batch["input"], batch["image"], keys_B, 1,
                                           apply_fn=apply_fn, likelihood=likelihood, scale=scale)
  log_px_z = parts.log_px_z[:, 0]
  kl_B = gaussian_kl(mean_BD, logvar_BD)
  loss_B = -log_px_z + kl_weight(beta, kl_warmup_steps, batch.get("step")) * kl_B
  return loss_B, {"loss": loss_B, "mse": parts.mse[:, 0], "elbo": log_px_z - kl_B, "kl": kl_B,
                  "log_px_z": log_px_z}


def iwae_bound(parts: VaeParts) -> jax.Array:
  """log (1/k) sum_j p(x, z_j) / q(z_j|x) per example: the k-sample importance-weighted bound.

  With k = 1 it is the one-sample (Monte-Carlo KL) ELBO; as k grows it tightens
  to log p(x): the same estimator gives the importance-sampled NLL.
  """
  log_w = parts.log_px_z + parts.log_pz - parts.log_qz_x
  return jax.nn.logsumexp(log_w, axis=-1) - jnp.log(log_w.shape[-1])


def iwae(params, batch: dict, key: jax.Array, *, apply_fn, likelihood: str, scale, num_samples: int):
  """The importance-weighted autoencoder (Burda et al. 2016): loss_B = -iwae_bound with k samples."""
  keys_B = _per_example_keys(key, batch["position"])
  parts, mean_BD, logvar_BD = sample_parts(params, batch["input"], batch["image"], keys_B, num_samples,
                                           apply_fn=apply_fn, likelihood=likelihood, scale=scale)
  bound_B = iwae_bound(parts)
  kl_B = gaussian_kl(mean_BD, logvar_BD)
  return -bound_B, {"loss": -bound_B, "mse": parts.mse[:, 0], "iwae_bound": bound_B, "kl": kl_B,
                    "elbo": parts.log_px_z[:, 0] - kl_B}


# --- VQ-VAE ------------------------------------------------------------------------------------

def vqvae(params, batch: dict, key: jax.Array, *, apply_fn, loss: str, commitment: float, ema: bool):
  """Vector-quantised autoencoder (van den Oord et al. 2017) on the encoder's grid z_BhwD.

  Each vector is replaced by its nearest code; the decoder sees the
  straight-through z_e + stop_gradient(z_q - z_e), so the reconstruction
  gradient passes to the encoder unchanged. loss_B = reconstruction +
  commitment * |z_e - sg(z_q)|^2 (+ |sg(z_e) - z_q|^2, which moves the codes,
  unless ema: then the codebook is an exponential moving average of the
  vectors assigned to each code, `vq_ema`, fed the per-example statistics
  through OPTIMIZER_ARGS). Squared distances are means over positions and dims.
  """
  del key
  z_e = apply_fn({"params": params}, batch["input"], method="encode")
  z_q, codes = apply_fn({"params": params}, z_e, method="quantize")
  z_st = z_e + jax.lax.stop_gradient(z_q - z_e)
  logits_BHWC = apply_fn({"params": params}, z_st, method="latent_logits")
  x_BHWC = batch["image"]
  recon_B = jax.vmap(functools.partial(losses.reconstruction_loss, loss))(logits_BHWC, x_BHWC)
  mse_B = jax.vmap(losses.mse)(jax.nn.sigmoid(logits_BHWC), x_BHWC)

  def mean_sq(a):
    return jnp.mean(jnp.square(a).reshape(a.shape[0], -1), axis=-1)

  commit_B = mean_sq(z_e - jax.lax.stop_gradient(z_q))
  loss_B = recon_B + commitment * commit_B
  out = {"mse": mse_B, "recon_loss": recon_B, "commitment": commit_B}
  if ema:
    num_codes = params["codebook"].shape[0]
    onehot_BPK = jax.nn.one_hot(codes.reshape(codes.shape[0], -1), num_codes, dtype=z_e.dtype)
    z_BPD = jax.lax.stop_gradient(z_e).reshape(z_e.shape[0], -1, z_e.shape[-1])
    out[OPTIMIZER_ARGS] = {"vq_counts": jnp.sum(onehot_BPK, axis=1),
                           "vq_sums": jnp.einsum("bpk,bpd->bkd", onehot_BPK, z_BPD)}
  else:
    loss_B = loss_B + mean_sq(jax.lax.stop_gradient(z_e) - z_q)
  return loss_B, {"loss": loss_B, **out}


class VqEmaState(NamedTuple):
  cluster_size: jax.Array  # [K] EMA of the number of vectors assigned to each code
  embed_sum: jax.Array  # [K, D] EMA of their sum


def vq_ema(decay: float, epsilon: float = 1e-5) -> optax.GradientTransformationExtraArgs:
  """Replaces the update of params['codebook'] by the EMA codebook update (van den Oord et al.
  2017, appendix; Sonnet's VectorQuantizerEMA): N_k <- decay N_k + (1 - decay) n_k,
  m_k <- decay m_k + (1 - decay) s_k, code_k = m_k / N_k (N Laplace-smoothed by epsilon),
  from the batch's counts n_k and sums s_k (`vq_counts`, `vq_sums`, summed over the
  global batch by the train step). Starts from N_k = 1, m_k = the initial code: one
  pseudo-vector at each code, so an unused code stays where it is.
  """
  def init(params):
    codebook = params["codebook"]
    return VqEmaState(jnp.ones(codebook.shape[:1], codebook.dtype), jnp.asarray(codebook))

  def update(updates, state, params, *, vq_counts=None, vq_sums=None, **extra):
    del extra
    if vq_counts is None:  # called without statistics (e.g. an optimizer test): leave the codes
      return updates, state
    size = decay * state.cluster_size + (1 - decay) * vq_counts
    embed = decay * state.embed_sum + (1 - decay) * vq_sums
    total = jnp.sum(size)
    smoothed = (size + epsilon) / (total + size.shape[0] * epsilon) * total
    codebook = embed / smoothed[:, None]
    return {**updates, "codebook": codebook - params["codebook"]}, VqEmaState(size, embed)

  return optax.GradientTransformationExtraArgs(init, update)


def from_config(cfg: ml_collections.ConfigDict, apply_fn):
  """The objective `cfg.objective` names, bound to the model's apply_fn and its own fields."""
  name = cfg.objective
  if name == "ae":
    return functools.partial(reconstruction, apply_fn=apply_fn, loss=cfg.loss)
  if name == "vae":
    return functools.partial(vae, apply_fn=apply_fn, likelihood=cfg.vae.likelihood, scale=cfg.vae.scale,
                             beta=cfg.vae.beta, kl_warmup_steps=cfg.vae.kl_warmup_steps)
  if name == "iwae":
    return functools.partial(iwae, apply_fn=apply_fn, likelihood=cfg.vae.likelihood, scale=cfg.vae.scale,
                             num_samples=cfg.vae.num_samples)
  if name == "sparse":
    return functools.partial(sparse, apply_fn=apply_fn, loss=cfg.loss, penalty=cfg.sparse.penalty,
                             weight=cfg.sparse.weight, target=cfg.sparse.target)
  if name == "contractive":
    return functools.partial(contractive, apply_fn=apply_fn, loss=cfg.loss, weight=cfg.contractive.weight)
  if name == "vqvae":
    return functools.partial(vqvae, apply_fn=apply_fn, loss=cfg.loss, commitment=cfg.vq.commitment,
                             ema=cfg.vq.ema_decay is not None)
  raise ValueError(f"objective={name!r}: expected one of {NAMES}")
