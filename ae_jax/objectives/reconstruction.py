"""Deterministic autoencoders: reconstruction, plus a sparsity or a contractive penalty.

They keep the reference's loss (the `loss` field, a mean over pixels, as Keras),
so `ae` gives the reference's numbers to the bit.
"""

import functools

import jax
import jax.numpy as jnp

from ae_jax import fields, losses
from ae_jax.objectives.objective import Objective, per_example_keys

SPARSE_PENALTIES = ("l1", "kl")

LOSS = fields.Field("loss", "mse", fields.one_of(*losses.NAMES), fields.ALLOW,
                    "reconstruction loss of the deterministic objectives (ae, sparse, contractive, vqvae), "
                    "a mean over pixels from the decoder's logits")
SPARSE_FIELDS = (
    fields.Field("sparse.penalty", "l1", fields.one_of(*SPARSE_PENALTIES), fields.ALLOW,
                 "sparse: `l1` of z, or `kl` of sigmoid(z) to the rate sparse.target"),
    fields.Field("sparse.weight", 1e-4, fields.NON_NEGATIVE_NUMBER, fields.ALLOW,
                 "sparse: weight of the penalty"),
    fields.Field("sparse.target", 0.05, fields.OPEN_FRACTION, fields.ALLOW,
                 "sparse, penalty `kl`: the target rate"),
)
CONTRACTIVE_FIELDS = (
    fields.Field("contractive.weight", 1e-4, fields.NON_NEGATIVE_NUMBER, fields.ALLOW,
                 "contractive: weight of ||dz/dx||_F^2"),
    fields.Field("contractive.probes", None, fields.optional(fields.POSITIVE), fields.ALLOW,
                 "contractive: None, the exact norm (one backward pass per latent dimension); K, "
                 "Hutchinson's unbiased estimate from K random latent directions (large latents, images)",
                 int),
)


def reconstruct(apply_fn, params, batch: dict, loss: str, z=None):
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
  return loss_B, {"loss": loss_B, "mse": mse_B}, {}


def sparse(params, batch: dict, key: jax.Array, *, apply_fn, loss: str, penalty: str, weight: float,
           target: float):
  """Reconstruction + weight * a sparsity penalty on the latent activations z_BD.

  `l1`: sum_d |z_d|. `kl`: sum_d KL(target || sigmoid(z_d)), each example's
  sigmoid activations pulled towards the rate `target`. (The classic penalty
  uses the batch's mean activation; a per-example one keeps the loss, and so
  the run, independent of how the batch is split across devices.)
  """
  del key
  recon_B, mse_B, z_BD = reconstruct(apply_fn, params, batch, loss)
  if penalty == "l1":
    penalty_B = jnp.sum(jnp.abs(z_BD), axis=-1)
  else:
    rate = jax.nn.sigmoid(z_BD)
    penalty_B = jnp.sum(target * (jnp.log(target) - jnp.log(rate))
                        + (1 - target) * (jnp.log1p(-target) - jnp.log1p(-rate)), axis=-1)
  loss_B = recon_B + weight * penalty_B
  return loss_B, {"loss": loss_B, "mse": mse_B, "recon_loss": recon_B, "sparsity": penalty_B}, {}


def contractive_penalty(encode_one, x_HWC: jax.Array) -> jax.Array:
  """||dz/dx||_F^2 of one example, exact (reverse mode: one pass per latent dimension)."""
  return jnp.sum(jnp.square(jax.jacrev(encode_one)(x_HWC)))


def contractive_estimate(encode_one, x_HWC: jax.Array, key: jax.Array, probes: int) -> jax.Array:
  """Hutchinson's estimate of ||dz/dx||_F^2 = E ||v^T dz/dx||^2 over v ~ N(0, I) in latent space:
  the mean over `probes` directions from `key`, one backward pass each; unbiased."""
  z, pullback = jax.vjp(encode_one, x_HWC)
  v = jax.random.normal(key, (probes, *z.shape), z.dtype)
  # A loop, not a vmap over the pullback: with the resnet, the train step's gradient of the vmapped
  # pullback crashed XLA:CPU (SIGSEGV, jax 0.10.2; the reference net did not).
  return sum(jnp.sum(jnp.square(pullback(v[i])[0])) for i in range(probes)) / probes


def contractive(params, batch: dict, key: jax.Array, *, apply_fn, loss: str, weight: float,
                probes: int | None = None):
  """Reconstruction + weight * the squared Frobenius norm of the encoder's Jacobian at the input
  (Rifai et al. 2011): exact with autodiff, or (probes) estimated from random directions drawn
  per example from fold_in(key, its global index)."""

  def encode_one(x_HWC):
    return apply_fn({"params": params}, x_HWC[None], method="encode")[0]

  recon_B, mse_B, _ = reconstruct(apply_fn, params, batch, loss)
  if probes is None:
    penalty_B = jax.vmap(functools.partial(contractive_penalty, encode_one))(batch["input"])
  else:
    keys_B = per_example_keys(key, batch["position"])
    penalty_B = jax.vmap(lambda x, k: contractive_estimate(encode_one, x, k, probes))(batch["input"], keys_B)
  loss_B = recon_B + weight * penalty_B
  return loss_B, {"loss": loss_B, "mse": mse_B, "recon_loss": recon_B, "jacobian_fro2": penalty_B}, {}


AE = Objective(lambda c, apply_fn: functools.partial(reconstruction, apply_fn=apply_fn, loss=c.loss),
               fields=(LOSS,), module=__name__)
SPARSE = Objective(
    lambda c, apply_fn: functools.partial(sparse, apply_fn=apply_fn, loss=c.loss, penalty=c.sparse.penalty,
                                          weight=c.sparse.weight, target=c.sparse.target),
    fields=(LOSS, *SPARSE_FIELDS), log_keys=("mse", "sparsity"), module=__name__)
CONTRACTIVE = Objective(
    lambda c, apply_fn: functools.partial(contractive, apply_fn=apply_fn, loss=c.loss,
                                          weight=c.contractive.weight, probes=c.contractive.probes),
    fields=(LOSS, *CONTRACTIVE_FIELDS), log_keys=("mse", "jacobian_fro2"), module=__name__)
