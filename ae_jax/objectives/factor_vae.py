"""FactorVAE (Kim & Mnih 2018): a VAE penalised by a discriminator's estimate of its total correlation.

The first objective with parameters of its own: the discriminator, an MLP that
tells samples of q(z) from samples of the product of its marginals (each latent
dimension shuffled across the batch), is kept in the train state's
params['discriminator'] and trained by its own Adam in the same pure step
(Objective.params and .optimizer). One loss, two players: the step differentiates

  loss_B = vae_loss_B + discriminator_loss_B

where the VAE sees the discriminator through stop_gradient and the discriminator
sees stop_gradient(z), so each set of params gets exactly its own gradient, from
the same batch, as disentanglement_lib's FactorVAE does. Shuffles are of the
global batch (gathered under pmap) from the step's key, the same on any device
count.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ae_jax import fields
from ae_jax.objectives import vae
from ae_jax.objectives.objective import Objective, batch_weights, global_batch

PERMUTE_STREAM = 2**32 - 1  # the shuffles' key: fold_in(key, this); examples use fold_in(key, index)

FIELDS = (
    fields.Field("factor_vae.gamma", 40.0, fields.NON_NEGATIVE_NUMBER, fields.ALLOW,
                 "factor_vae: the weight of the discriminator's total-correlation estimate"),
    fields.Field("factor_vae.widths", (1000,) * 6, fields.LEVELS, fields.NEVER,
                 "factor_vae: the discriminator's hidden layers (leaky ReLU 0.2), then 2 logits"),
    fields.Field("factor_vae.learning_rate", 1e-4, fields.POSITIVE_NUMBER, fields.ALLOW,
                 "factor_vae: the discriminator's Adam learning rate"),
    fields.Field("factor_vae.b1", 0.5, fields.OPEN_FRACTION, fields.ALLOW,
                 "factor_vae: the discriminator's Adam b1"),
    fields.Field("factor_vae.b2", 0.9, fields.OPEN_FRACTION, fields.ALLOW,
                 "factor_vae: the discriminator's Adam b2"),
)


class Discriminator(nn.Module):
  """z_BD -> logits [B, 2]: class 0, a sample of q(z); class 1, of the product of its marginals."""

  widths: tuple[int, ...] = (1000,) * 6

  @nn.compact
  def __call__(self, z_BD: jax.Array) -> jax.Array:
    x = z_BD
    for i, w in enumerate(self.widths):
      x = nn.leaky_relu(nn.Dense(w, name=f"d{i + 1}")(x), 0.2)
    return nn.Dense(2, name="logits")(x)


def permute_dims(z_MD: jax.Array, key: jax.Array, weight_M: jax.Array) -> jax.Array:
  """Each dimension's values shuffled among the counted examples (weight > 0) by its own permutation
  from `key`: a sample of the product of the marginals of q(z). Uncounted rows stay among themselves."""
  m, d = z_MD.shape
  counted = weight_M > 0
  order = jnp.argsort(~counted, stable=True)  # the counted rows first, in order

  def one(k, col_M):
    perm = jnp.argsort(jnp.where(counted, jax.random.uniform(k, (m,)), 2.0), stable=True)
    return col_M.at[order].set(col_M[perm])

  return jax.vmap(one, in_axes=(0, 1), out_axes=1)(jax.random.split(key, d), z_MD)


def factor_vae(params, batch: dict, key: jax.Array, *, apply_fn, likelihood: str, scale, gamma: float,
               widths: tuple[int, ...], axis_name=None):
  """Per example: vae_loss = -log p(x|z) + KL + gamma (D_0(z) - D_1(z)), the logit difference an
  estimate of the total correlation; discriminator_loss = -(log softmax(D(z))_0 + log softmax(D(z'))_1) / 2,
  z' the shuffled batch. loss_B, their sum, is what the step differentiates."""
  s = vae.one_sample(params, batch, key, apply_fn=apply_fn, likelihood=likelihood, scale=scale)
  disc = Discriminator(widths)
  d_params = params["discriminator"]
  logits_B2 = disc.apply({"params": jax.lax.stop_gradient(d_params)}, s.z_BD)
  tc_B = logits_B2[:, 0] - logits_B2[:, 1]
  vae_loss_B = -s.log_px_z_B + s.kl_B + gamma * tc_B

  z_B = jax.lax.stop_gradient(s.z_BD)
  (z_MD, weight_M), offset = global_batch((z_B, batch_weights(batch, len(z_B))), axis_name)
  shuffled_MD = permute_dims(z_MD, jax.random.fold_in(key, PERMUTE_STREAM), weight_M)
  shuffled_BD = jax.lax.dynamic_slice_in_dim(shuffled_MD, offset, len(z_B))
  real = jax.nn.log_softmax(disc.apply({"params": d_params}, z_B))[:, 0]
  fake = jax.nn.log_softmax(disc.apply({"params": d_params}, shuffled_BD))[:, 1]
  disc_loss_B = -0.5 * (real + fake)
  accuracy_B = 0.5 * ((real > jnp.log(0.5)).astype(jnp.float32) + (fake > jnp.log(0.5)).astype(jnp.float32))

  loss_B = vae_loss_B + disc_loss_B
  metrics = {**vae.elbo_metrics(s, loss_B, likelihood, batch["image"]), "vae_loss": vae_loss_B, "tc": tc_B,
             "discriminator_loss": disc_loss_B, "discriminator_accuracy": accuracy_B}
  return loss_B, metrics, vae.scale_stats(s.parts, scale, batch["image"])


def init_params(c, key: jax.Array, latent_dim: int) -> dict:
  """{'discriminator': its params} for latents of latent_dim."""
  disc = Discriminator(tuple(c.factor_vae.widths))
  return {"discriminator": disc.init(key, jnp.zeros((1, latent_dim)))["params"]}


def optimizer(c) -> optax.GradientTransformation:
  """The discriminator's Adam (disentanglement_lib's study: lr 1e-4, b1 0.5, b2 0.9, eps 1e-8)."""
  return optax.adam(c.factor_vae.learning_rate, b1=c.factor_vae.b1, b2=c.factor_vae.b2, eps=1e-8)


FACTOR_VAE = Objective(
    lambda c, apply_fn: functools.partial(factor_vae, apply_fn=apply_fn, likelihood=c.vae.likelihood,
                                          scale=vae.scale_arg(c), gamma=c.factor_vae.gamma,
                                          widths=tuple(c.factor_vae.widths)),
    head=vae.head, fields=(*vae.LIKELIHOOD_FIELDS, *FIELDS), check=vae.check, transform=vae.transform,
    log_keys=("mse", "kl", "tc", "discriminator_accuracy"), log_weights=vae.bind_log_weights,
    code_length=vae.discrete, params=init_params, optimizer=optimizer, coupled=True, module=__name__)
