"""The vector-quantised autoencoder (van den Oord et al. 2017), with codes learned by gradient or EMA."""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ae_jax import fields, losses
from ae_jax.models import Head
from ae_jax.objectives.objective import Objective
from ae_jax.objectives.reconstruction import LOSS

FIELDS = (
    fields.Field("vq.commitment", 0.25, fields.NON_NEGATIVE_NUMBER, fields.ALLOW, "vqvae: commitment cost"),
    fields.Field("vq.ema_decay", None, fields.optional(fields.OPEN_FRACTION), fields.NEVER,
                 "vqvae: EMA codebook updates with this decay; None: codes learned by gradient", float),
)


def vqvae(params, batch: dict, key: jax.Array, *, apply_fn, loss: str, commitment: float, ema: bool):
  """Vector-quantised autoencoder on the encoder's grid z_BhwD.

  Each vector is replaced by its nearest code; the decoder sees the
  straight-through z_e + stop_gradient(z_q - z_e), so the reconstruction
  gradient passes to the encoder unchanged. loss_B = reconstruction +
  commitment * |z_e - sg(z_q)|^2 (+ |sg(z_e) - z_q|^2, which moves the codes,
  unless ema: then the codebook is an exponential moving average of the
  vectors assigned to each code, `vq_ema`, fed the per-example statistics this
  returns). Squared distances are means over positions and dims.
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
  stats = {}
  if ema:
    num_codes = params["codebook"].shape[0]
    onehot_BPK = jax.nn.one_hot(codes.reshape(codes.shape[0], -1), num_codes, dtype=z_e.dtype)
    z_BPD = jax.lax.stop_gradient(z_e).reshape(z_e.shape[0], -1, z_e.shape[-1])
    stats = {"vq_counts": jnp.sum(onehot_BPK, axis=1),
             "vq_sums": jnp.einsum("bpk,bpd->bkd", onehot_BPK, z_BPD)}
  else:
    loss_B = loss_B + mean_sq(jax.lax.stop_gradient(z_e) - z_q)
  return loss_B, {"loss": loss_B, "mse": mse_B, "recon_loss": recon_B, "commitment": commit_B}, stats


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


VQVAE = Objective(
    lambda c, apply_fn: functools.partial(vqvae, apply_fn=apply_fn, loss=c.loss, commitment=c.vq.commitment,
                                          ema=c.vq.ema_decay is not None),
    head=lambda c: Head("grid"), fields=(LOSS, *FIELDS),
    transform=lambda c: None if c.vq.ema_decay is None else vq_ema(c.vq.ema_decay),
    log_keys=("mse", "commitment"), module=__name__)
