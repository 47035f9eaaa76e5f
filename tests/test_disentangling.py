"""β-TCVAE, DIP-VAE-I/II, AnnealedVAE and FactorVAE against independent float64 numpy computations."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ae_jax import objectives, train
from ae_jax.objectives import disentangling, factor_vae
import oracle

B, D = 6, 2  # the tiny model's latent_dim


def _setup(objective, **fields):
  cfg = oracle.tiny_config(objective, **{k.replace(".", "__"): v for k, v in fields.items()})
  model = oracle.tiny_model(cfg)
  state = train.create_train_state(model, cfg, jax.random.key(0))
  x = np.asarray(jax.random.uniform(jax.random.key(1), (B, 8, 8, 1)), np.float32)
  return cfg, model, state, {"image": x, "input": x, "position": jnp.arange(B), "step": jnp.asarray(5)}


def _sample(model, params, batch, key):
  """float64 (mean, logvar, z) of each example, z from fold_in(key, b) as the VAE draws it."""
  mean, logvar = (np.asarray(a, np.float64) for a in oracle.apply(model, params, batch["input"], "posterior"))
  eps = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(key, b), (1, D)))[0] for b in range(B)])
  return mean, logvar, mean + np.exp(logvar / 2) * eps


def _np_log_normal(z, mean, logvar):
  return -0.5 * (np.log(2 * np.pi) + logvar + (z - mean) ** 2 / np.exp(logvar))


def _np_tc(z, mean, logvar, keep):
  """For each example: log sum_j q(z_b|x_j) - sum_d log sum_j q(z_bd|x_j) over the kept j, by loops."""
  out = []
  for b in range(len(z)):
    joint = [np.sum(_np_log_normal(z[b], mean[j], logvar[j])) for j in keep]
    marg = [[_np_log_normal(z[b, d], mean[j, d], logvar[j, d]) for j in keep] for d in range(z.shape[1])]
    lse = lambda v: np.log(np.sum(np.exp(np.asarray(v))))  # noqa: E731
    out.append(lse(joint) - sum(lse(m) for m in marg))
  return np.asarray(out)


def test_beta_tcvae_adds_beta_minus_one_times_the_minibatch_total_correlation():
  cfg, model, state, batch = _setup("beta_tcvae", **{"beta_tcvae.beta": 6.0})
  key = jax.random.key(3)
  loss_B, m, _ = jax.jit(objectives.bind(cfg, model.apply))(state.params, batch, key)
  mean, logvar, z = _sample(model, state.params, batch, key)
  tc = _np_tc(z, mean, logvar, range(B))
  np.testing.assert_allclose(m["tc_mws"], tc, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(loss_B, -np.asarray(m["log_px_z"]) + np.asarray(m["kl"]) + 5.0 * tc, rtol=1e-5)
  # In the eval, padding (mask False) is left out of q(z).
  masked = {**batch, "mask": np.array([1, 1, 1, 1, 0, 0], bool)}
  _, mm, _ = jax.jit(objectives.bind(cfg, model.apply))(state.params, masked, key)
  np.testing.assert_allclose(mm["tc_mws"], _np_tc(z, mean, logvar, range(4)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["i", "ii"])
def test_dip_regularizer_is_the_batch_covariance_penalty(kind):
  cfg, model, state, batch = _setup("dip_vae", **{"dip_vae.kind": kind, "dip_vae.lambda_od": 3.0})
  key = jax.random.key(3)
  loss_B, m, _ = jax.jit(objectives.bind(cfg, model.apply))(state.params, batch, key)
  mean, logvar, _ = _sample(model, state.params, batch, key)
  cov = np.cov(mean.T, bias=True)
  if kind == "ii":
    cov = cov + np.diag(np.mean(np.exp(logvar), axis=0))
  lambda_d = 30.0 if kind == "i" else 3.0  # disentanglement_lib's lambda_d_factor: 10 and 1
  off = cov - np.diag(np.diag(cov))
  want = 3.0 * np.sum(off**2) + lambda_d * np.sum((np.diag(cov) - 1) ** 2)
  np.testing.assert_allclose(m["dip_regularizer"], np.full(B, want), rtol=1e-4)
  np.testing.assert_allclose(loss_B, -np.asarray(m["log_px_z"]) + np.asarray(m["kl"]) + want, rtol=1e-5)


def test_annealed_vae_pulls_the_batch_mean_kl_to_the_ramped_capacity():
  cfg, model, state, batch = _setup("annealed_vae", **{"annealed_vae.c_max": 20.0, "annealed_vae.gamma": 7.0,
                                                       "annealed_vae.ramp_steps": 10})
  key = jax.random.key(3)
  loss_B, m, _ = jax.jit(objectives.bind(cfg, model.apply))(state.params, batch, key)
  mean, logvar, _ = _sample(model, state.params, batch, key)
  kl = 0.5 * np.sum(mean**2 + np.exp(logvar) - 1 - logvar, axis=-1)
  np.testing.assert_allclose(m["kl"], kl, rtol=1e-5)
  c = 20.0 * 5 / 10  # step 5 of a 10-step ramp
  np.testing.assert_allclose(loss_B, -np.asarray(m["log_px_z"]) + 7.0 * abs(kl.mean() - c), rtol=1e-5)
  chex.assert_trees_all_close(disentangling.capacity(20.0, 10, jnp.asarray(30)), 20.0)  # capped
  chex.assert_trees_all_close(disentangling.capacity(20.0, 10, None), 20.0)  # the eval: c_max


def test_permute_dims_shuffles_each_dimension_among_the_counted_rows():
  z = jnp.arange(24.0).reshape(8, 3) * jnp.array([1.0, 100.0, 10_000.0])
  out = np.asarray(factor_vae.permute_dims(z, jax.random.key(0), jnp.ones(8)))
  for d in range(3):
    assert sorted(out[:, d]) == sorted(np.asarray(z[:, d]))  # a permutation of the column
  assert len({tuple(np.argsort(out[:, d])) for d in range(3)}) == 3  # its own for each dimension
  masked = np.asarray(factor_vae.permute_dims(z, jax.random.key(0), jnp.array([1, 1, 0, 1, 1, 1, 0, 1.0])))
  counted = [0, 1, 3, 4, 5, 7]
  for d in range(3):
    assert sorted(masked[counted, d]) == sorted(np.asarray(z[counted, d]))
    np.testing.assert_array_equal(np.sort(masked[[2, 6], d]), np.sort(np.asarray(z[[2, 6], d])))


def test_factor_vae_gives_each_player_its_own_gradient_and_optimizer():
  cfg, model, state, batch = _setup("factor_vae", **{"factor_vae.gamma": 3.0, "learning_rate": 1e-3})
  fn = objectives.bind(cfg, model.apply)
  key = jax.random.key(3)
  params = state.params
  assert set(params["discriminator"]) == {"d1", "d2", "logits"}
  disc = factor_vae.Discriminator((16, 16))
  loss_B, m, _ = jax.jit(fn)(params, batch, key)
  _, _, z = _sample(model, params, batch, key)
  logits = np.asarray(disc.apply({"params": params["discriminator"]}, jnp.asarray(z, jnp.float32)),
                      np.float64)
  np.testing.assert_allclose(m["tc"], logits[:, 0] - logits[:, 1], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(m["vae_loss"], -np.asarray(m["log_px_z"]) + np.asarray(m["kl"]) + 3.0 * m["tc"],
                             rtol=1e-5)
  np.testing.assert_allclose(loss_B, np.asarray(m["vae_loss"]) + np.asarray(m["discriminator_loss"]),
                             rtol=1e-6)

  # The gradient of the sum: the model's is that of the VAE loss alone, the discriminator's that of its
  # own loss alone (z held fixed): each player sees only its own objective.
  @jax.jit
  def gradients(p, b, k):  # of the loss, of the VAE's part, of the discriminator's part (one compile)
    def mean_of(name):
      return lambda q: jnp.mean(fn(q, b, k)[0] if name == "loss" else fn(q, b, k)[1][name])
    return [jax.grad(mean_of(name))(p) for name in ("loss", "vae_loss", "discriminator_loss")]

  g, g_vae, g_disc = gradients(params, batch, key)
  model_g = {k: v for k, v in g.items() if k != "discriminator"}
  chex.assert_trees_all_close(model_g, {k: v for k, v in g_vae.items() if k != "discriminator"}, rtol=1e-5)
  chex.assert_trees_all_close(g["discriminator"], g_disc["discriminator"], rtol=1e-5)
  assert all(float(jnp.abs(v).max()) == 0 for v in jax.tree.leaves(g_disc["encoder"]))  # z is held fixed

  # One train step: the model moves by Adam(1e-3), the discriminator by its own Adam(1e-4, 0.5, 0.9).
  new, _ = jax.jit(train.bind_steps(cfg, model).train)(state, batch, jax.random.key(4))
  _, objective_key = train.split_step_key(jax.random.fold_in(jax.random.key(4), 0))  # step 0's key
  step0 = {**batch, "step": jnp.asarray(0)}
  g = gradients(params, step0, objective_key)[0]
  for name, tx in (("encoder", optax.adam(1e-3)), ("discriminator", optax.adam(1e-4, b1=0.5, b2=0.9))):
    updates, _ = tx.update(g[name], tx.init(params[name]))
    chex.assert_trees_all_close(new.params[name], optax.apply_updates(params[name], updates),
                                rtol=1e-4, atol=1e-7)
