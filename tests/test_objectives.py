"""Each objective against an independent float64 numpy computation on a tiny case."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ae_jax import objectives, parallel, train
from ae_jax.data import transforms
from ae_jax.objectives import reconstruction, vae, vq
import oracle

B = 4


def _setup(objective, **fields):
  cfg = oracle.tiny_config(objective, **{k.replace(".", "__"): v for k, v in fields.items()})
  model = oracle.tiny_model(cfg)
  state = train.create_train_state(model, cfg, jax.random.key(0))
  x = np.asarray(jax.random.uniform(jax.random.key(1), (B, 8, 8, 1)), np.float32)
  batch = {"image": x, "input": x, "position": jnp.arange(B)}
  return cfg, model, state, batch


def _bce_nats(logits, x):
  """-sum log Bernoulli(x | sigmoid(logits)) per example, float64."""
  logits, x = np.asarray(logits, np.float64), np.asarray(x, np.float64)
  p = 1 / (1 + np.exp(-logits))
  return -np.sum(x * np.log(p) + (1 - x) * np.log(1 - p), axis=(1, 2, 3))


def _np_kl(mean, logvar):
  mean, logvar = np.asarray(mean, np.float64), np.asarray(logvar, np.float64)
  return 0.5 * np.sum(mean**2 + np.exp(logvar) - 1 - logvar, axis=-1)


def test_gaussian_kl_matches_a_monte_carlo_estimate():
  rng = np.random.default_rng(0)
  mean, logvar = rng.normal(size=(3, 4)), rng.normal(scale=0.5, size=(3, 4))
  z = mean + np.exp(logvar / 2) * rng.normal(size=(200_000, 3, 4))
  log_q = -0.5 * np.sum(np.log(2 * np.pi) + logvar + (z - mean) ** 2 / np.exp(logvar), -1)
  log_p = -0.5 * np.sum(np.log(2 * np.pi) + z**2, -1)
  mc = np.mean(log_q - log_p, axis=0)
  closed = np.asarray(vae.gaussian_kl(jnp.asarray(mean), jnp.asarray(logvar)))
  np.testing.assert_allclose(closed, _np_kl(mean, logvar), rtol=1e-5)
  np.testing.assert_allclose(closed, mc, rtol=0.02, atol=0.01)


def test_vae_loss_is_bernoulli_nats_plus_beta_kl_from_per_example_keys():
  cfg, model, state, batch = _setup("vae", **{"vae.beta": 2.5})
  objective = objectives.bind(cfg, model.apply)
  key = jax.random.key(3)
  loss_B, m, _ = objective(state.params, batch, key)
  mean, logvar = oracle.apply(model, state.params, batch["input"], "posterior")
  # Independent: example b's noise from fold_in(key, b), decoded one at a time.
  eps = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(key, b), (1, cfg.model.latent_dim)))[0]
                  for b in range(B)])
  z = np.asarray(mean, np.float64) + np.exp(np.asarray(logvar, np.float64) / 2) * eps
  logits = oracle.apply(model, state.params, jnp.asarray(z, jnp.float32), "decode_logits")
  nll, kl = _bce_nats(logits, batch["image"]), _np_kl(mean, logvar)
  np.testing.assert_allclose(loss_B, nll + 2.5 * kl, rtol=1e-5)
  np.testing.assert_allclose(m["elbo"], -nll - kl, rtol=1e-5)
  # The same example at another position of the batch gets another draw.
  moved = {**batch, "position": batch["position"] + 7}
  assert not np.allclose(objective(state.params, moved, key)[0], loss_B)


def test_kl_warmup_ramps_beta_from_zero():
  cfg, model, state, batch = _setup("vae", **{"vae.kl_warmup_steps": 10})
  objective = objectives.bind(cfg, model.apply)
  key = jax.random.key(3)
  _, m, _ = objective(state.params, batch, key)
  for step, w in ((0, 0.0), (4, 0.4), (10, 1.0), (25, 1.0)):
    loss_B, _, _ = objective(state.params, {**batch, "step": jnp.asarray(step)}, key)
    np.testing.assert_allclose(loss_B, -m["log_px_z"] + w * m["kl"], rtol=1e-5)


def test_gaussian_likelihood_fixed_and_learned_scale():
  for scale in (0.1, None):
    cfg, model, state, batch = _setup("vae", **{"vae.likelihood": "gaussian", "vae.scale": scale})
    if scale is None:
      assert state.params["log_scale"].shape == ()
      state = state.replace(params={**state.params, "log_scale": jnp.asarray(np.log(0.3), jnp.float32)})
    _, m, _ = jax.jit(objectives.bind(cfg, model.apply))(state.params, batch, jax.random.key(3))
    x, mu = _target_and_decoded_mean(model, state, batch, jax.random.key(3))
    np.testing.assert_allclose(m["log_px_z"], _np_gaussian_log_px(x, mu, 0.1 if scale else 0.3), rtol=1e-5)


def _target_and_decoded_mean(model, state, batch, key):
  """(x, sigmoid(decoder(z))) in float64, z the one sample of example b from fold_in(key, b)."""
  mean, logvar = oracle.apply(model, state.params, batch["input"], "posterior")
  d = mean.shape[-1]
  eps = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(key, b), (1, d)))[0] for b in range(B)])
  z = np.asarray(mean) + np.exp(np.asarray(logvar) / 2) * eps
  logits = oracle.apply(model, state.params, jnp.asarray(z, jnp.float32), "decode_logits")
  mu = np.asarray(jax.nn.sigmoid(logits), np.float64)
  return np.asarray(batch["image"], np.float64), mu


def _np_gaussian_log_px(x, mu, sigma):
  return np.sum(-0.5 * ((x - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2 * np.pi), axis=(1, 2, 3))


def test_optimal_scale_is_each_examples_rms_error_without_a_param():
  cfg, model, state, batch = _setup("vae", **{"vae.likelihood": "gaussian", "vae.scale_fit": "optimal"})
  assert "log_scale" not in state.params
  _, m, _ = jax.jit(objectives.bind(cfg, model.apply))(state.params, batch, jax.random.key(3))
  x, mu = _target_and_decoded_mean(model, state, batch, jax.random.key(3))
  sigma = np.sqrt(np.mean((x - mu) ** 2, axis=(1, 2, 3), keepdims=True))  # sigma-VAE's optimum
  np.testing.assert_allclose(m["log_px_z"], _np_gaussian_log_px(x, mu, sigma), rtol=1e-5)
  with pytest.raises(ValueError, match=r"^vae.scale_fit='optimal': fits the scale of"):
    objectives.check(oracle.tiny_config("vae", **{"vae.scale_fit": "optimal"}))  # bernoulli has none


def test_ema_scale_is_set_to_each_channels_rms_error_of_the_training_batches():
  cfg = oracle.tiny_config("vae", **{"vae.likelihood": "discretized_gaussian", "vae.scale_fit": "ema",
                                     "vae.scale_decay": 0.9})
  model = train.build_model(cfg, (8, 8, 3))
  state = train.create_train_state(model, cfg, jax.random.key(0))
  chex.assert_trees_all_equal(state.params["log_scale"], jnp.zeros(3))
  k = np.asarray(jax.random.randint(jax.random.key(1), (B, 8, 8, 3), 0, 256))
  x = (k * np.array([1.0, 0.5, 0.1]) / 255).astype(np.float32)  # the channels' errors differ
  key = jax.random.key(2)
  new, _ = jax.jit(train.bind_steps(cfg, model).train)(state, {"image": x}, key)
  # The step's sample of each example, decoded independently; one step of the EMA from 1 pseudo-pixel.
  _, objective_key = train.split_step_key(jax.random.fold_in(key, 0))
  x64, mu = _target_and_decoded_mean(model, state, {"image": x, "input": x}, objective_key)
  sse_C = np.sum((x64 - mu) ** 2, axis=(0, 1, 2))
  expected = 0.5 * np.log((0.9 * 1 + 0.1 * sse_C) / (0.9 * 1 + 0.1 * B * 64))
  np.testing.assert_allclose(new.params["log_scale"], expected, rtol=1e-5)
  assert len(set(np.round(expected, 2))) == 3
  # No gradient reaches it (the EMA sets it); the eval's likelihood uses it as a fixed param.
  objective = objectives.bind(cfg, model.apply)
  grads = jax.grad(lambda p: jnp.mean(objective(p, {"image": x, "input": x, "position": jnp.arange(B)},
                                                key)[0]))(state.params)
  assert np.all(grads["log_scale"] == 0)
  with pytest.raises(ValueError, match=r"^vae.scale_fit='optimal': fits the scale of vae.likelihood="):
    objectives.check(oracle.tiny_config("vae", **{"vae.likelihood": "discretized_gaussian",
                                                  "vae.scale_fit": "optimal"}))


def test_discretized_gaussian_is_the_normal_mass_of_each_8bit_bin():
  from scipy import stats  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 3, 3)).astype(np.float32)
  k = rng.integers(0, 256, size=(2, 3, 3, 3))
  k[0, 0, 0] = (0, 255, 128)  # both open end bins
  x = (k / 255).astype(np.float32)
  got = vae.log_likelihood("discretized_gaussian", jnp.asarray(logits), jnp.asarray(x),
                           jnp.asarray(np.log(0.2), jnp.float32))
  mean = 1 / (1 + np.exp(-logits.astype(np.float64)))
  lo, hi = np.where(k == 0, -np.inf, (k - 0.5) / 255), np.where(k == 255, np.inf, (k + 0.5) / 255)
  mass = stats.norm.cdf(hi, mean, 0.2) - stats.norm.cdf(lo, mean, 0.2)
  np.testing.assert_allclose(got, np.log(mass).reshape(2, -1).sum(1), rtol=1e-5)
  # The 256 values of a pixel have probabilities that sum to 1, for a wide and a narrow scale and a
  # mean near an end (the mass is computed in the tail it sits in).
  values = jnp.arange(256, dtype=jnp.float32).reshape(256, 1, 1, 1) / 255
  for m, scale in ((0.3, 0.2), (0.5, 0.001), (0.995, 0.003)):
    logit = jnp.full((256, 1, 1, 1), np.log(m / (1 - m)), jnp.float32)
    p = jnp.exp(vae.log_likelihood("discretized_gaussian", logit, values, jnp.log(jnp.float32(scale))))
    np.testing.assert_allclose(float(jnp.sum(p)), 1.0, rtol=1e-5)
  # The objective reports the ELBO per pixel and channel in bits.
  cfg, model, state, batch = _setup("vae", **{"vae.likelihood": "discretized_gaussian", "vae.scale": 0.1})
  _, metrics, _ = objectives.bind(cfg, model.apply)(state.params, batch, jax.random.key(3))
  np.testing.assert_allclose(metrics["bits_per_dim"],
                             -metrics["elbo"] / (np.log(2) * np.prod(batch["image"].shape[1:])), rtol=1e-6)


def test_iwae_with_one_sample_is_the_one_sample_elbo_and_matches_vae_on_average():
  cfg, model, state, batch = _setup("iwae", **{"vae.num_samples": 1})
  iwae = jax.jit(objectives.bind(cfg, model.apply))
  key = jax.random.key(5)
  loss_B, _, _ = iwae(state.params, batch, key)
  keys_B = jax.vmap(jax.random.fold_in, (None, 0))(key, batch["position"])
  parts, _, _ = jax.jit(functools.partial(vae.sample_parts, num_samples=1, apply_fn=model.apply,
                                          likelihood="bernoulli", scale=None))(
      state.params, batch["input"], batch["image"], keys_B)
  one_sample_elbo = parts.log_px_z[:, 0] + parts.log_pz[:, 0] - parts.log_qz_x[:, 0]
  np.testing.assert_allclose(-loss_B, one_sample_elbo, rtol=1e-6)
  # E[one-sample ELBO] = the closed-form-KL ELBO the vae objective reports.
  elbo = objectives.bind(_setup("vae")[0], model.apply)
  draws = jax.jit(jax.vmap(lambda k: (iwae(state.params, batch, k)[0],
                                      elbo(state.params, batch, k)[1]["elbo"])))(
      jax.random.split(jax.random.key(6), 2000))
  np.testing.assert_allclose(-np.mean(draws[0], 0), np.mean(draws[1], 0), rtol=2e-3)


def test_iwae_bound_is_the_log_mean_exp_of_the_weights():
  rng = np.random.default_rng(1)
  a, b, c = (rng.normal(size=(3, 6)) * 20 for _ in range(3))
  parts = vae.VaeParts(jnp.asarray(a), jnp.asarray(b), jnp.asarray(c), None)
  w = a + b - c
  ref = np.log(np.mean(np.exp(w - w.max(1, keepdims=True)), 1)) + w.max(1)
  np.testing.assert_allclose(vae.iwae_bound(parts), ref, rtol=1e-6)
  # More samples: a tighter bound on average.
  cfg, model, state, batch = _setup("iwae")
  bounds = {}
  for k in (1, 20):
    fn = jax.jit(objectives.bind(_setup("iwae", **{"vae.num_samples": k})[0], model.apply))
    bounds[k] = np.mean(fn(state.params, batch, jax.random.key(2))[1]["iwae_bound"])
  assert bounds[20] > bounds[1]


def test_sparse_penalties_by_hand():
  for penalty in ("l1", "kl"):
    cfg, model, state, batch = _setup("sparse", **{"sparse.penalty": penalty, "sparse.weight": 0.5})
    loss_B, m, _ = jax.jit(objectives.bind(cfg, model.apply))(state.params, batch, jax.random.key(0))
    z = np.asarray(oracle.apply(model, state.params, batch["input"], "encode"), np.float64)
    if penalty == "l1":
      ref = np.abs(z).sum(-1)
    else:
      r, q = 0.05, 1 / (1 + np.exp(-z))
      ref = np.sum(r * np.log(r / q) + (1 - r) * np.log((1 - r) / (1 - q)), -1)
    np.testing.assert_allclose(m["sparsity"], ref, rtol=1e-5)
    np.testing.assert_allclose(loss_B, m["recon_loss"] + 0.5 * ref, rtol=1e-6)


def test_contractive_penalty_matches_finite_differences():
  cfg, model, state, batch = _setup("contractive", **{"contractive.weight": 0.3})
  loss_B, m, _ = jax.jit(objectives.bind(cfg, model.apply))(state.params, batch, jax.random.key(0))
  x = np.asarray(batch["input"], np.float64)
  h = 1e-6
  fro2 = []
  for b in range(B):  # central differences, float64, one pixel at a time
    eye = np.eye(x[b].size).reshape(-1, *x.shape[1:]) * h
    jac = (oracle.encode(state.params, x[b] + eye) - oracle.encode(state.params, x[b] - eye)) / (2 * h)
    fro2.append(np.sum(jac**2))
  np.testing.assert_allclose(m["jacobian_fro2"], fro2, rtol=1e-4)
  np.testing.assert_allclose(loss_B, m["recon_loss"] + 0.3 * np.asarray(fro2), rtol=1e-5)
  # Its gradient reaches the encoder (second-order autodiff), not the decoder.
  grads = jax.jit(jax.grad(lambda p: jnp.mean(reconstruction.contractive_penalty(
      lambda xi: oracle.apply(model, p, xi[None], "encode")[0], batch["input"][0]))))(state.params)
  assert np.abs(grads["encoder"]["conv0"]["kernel"]).max() > 0
  assert all(np.all(g == 0) for g in jax.tree.leaves(grads["decoder"]))


def test_contractive_probes_estimate_the_exact_norm_without_bias():
  cfg, model, state, batch = _setup("contractive", **{"contractive.weight": 0.3})
  exact_fn = jax.jit(objectives.bind(cfg, model.apply))
  exact = exact_fn(state.params, batch, jax.random.key(0))[1]["jacobian_fro2"]
  cfg.contractive.probes = 4
  fn = jax.jit(objectives.bind(cfg, model.apply))
  draws = np.stack([fn(state.params, batch, jax.random.key(k))[1]["jacobian_fro2"] for k in range(300)])
  # Unbiased: the mean of 300 estimates (1,200 directions) is within 4 standard errors of the exact norm.
  se = draws.std(axis=0) / np.sqrt(len(draws))
  assert np.all(np.abs(draws.mean(axis=0) - exact) < 4 * se + 1e-6), (draws.mean(axis=0), exact, se)
  assert np.all(draws.std(axis=0) > 0)  # random, not the exact value
  # Per example: an example's estimate depends on its global index, not on the batch around it.
  one = {k: v[2:3] for k, v in batch.items()}
  np.testing.assert_allclose(fn(state.params, one, jax.random.key(7))[1]["jacobian_fro2"][0],
                             fn(state.params, batch, jax.random.key(7))[1]["jacobian_fro2"][2], rtol=1e-5)


def _fake_vq(codebook):
  """A stand-in model: encode = w * x on a 2x1 grid of 2-d vectors, decoder logits = its sum."""
  def apply_fn(variables, x, method):
    p = variables["params"]
    if method == "encode":
      return p["w"] * x
    if method == "quantize":
      d = jnp.sum((x[..., None, :] - p["codebook"]) ** 2, -1)
      codes = jnp.argmin(d, -1)
      return p["codebook"][codes], codes
    if method == "latent_logits":
      return jnp.sum(x, axis=(1, 2, 3))[:, None, None, None] * jnp.ones((1, 2, 2, 1))
    raise ValueError(method)
  return apply_fn, {"w": jnp.asarray(1.5), "codebook": jnp.asarray(codebook, jnp.float32)}


def test_vq_straight_through_gradient_and_codebook_loss_by_hand():
  codebook = np.array([[0.0, 0.0], [1.0, 1.0], [0.2, -0.4]])
  apply_fn, params = _fake_vq(codebook)
  x = np.array([[[[0.1, 0.2]], [[0.5, 0.6]]]], np.float32)  # [B=1, 2, 1, 2]
  batch = {"image": np.full((1, 2, 2, 1), 0.3, np.float32), "input": x, "position": jnp.arange(1)}
  fn = functools.partial(vq.vqvae, apply_fn=apply_fn, loss="mse", commitment=0.25, ema=False)
  loss, grads = jax.jit(jax.value_and_grad(lambda p: jnp.mean(fn(p, batch, None)[0])))(params)
  z_e = 1.5 * x.astype(np.float64)  # [[0.15, 0.3], [0.75, 0.9]] -> codes 0 and 1
  z_q = codebook[[0, 1]]
  s = z_q.sum()  # the decoder sees z_q's values (straight through)
  pred = 1 / (1 + np.exp(-s))
  recon = (pred - 0.3) ** 2
  sq = np.mean((z_e.reshape(2, 2) - z_q) ** 2)
  np.testing.assert_allclose(loss, recon + 0.25 * sq + sq, rtol=1e-6)
  # d/dw: the reconstruction gradient w.r.t. z_q passed to z_e unchanged, plus the commitment term.
  d_recon_ds = 2 * (pred - 0.3) * pred * (1 - pred)
  d_commit_dze = 0.25 * 2 * (z_e.reshape(2, 2) - z_q) / 4
  dw = np.sum((d_recon_ds + d_commit_dze) * x.reshape(2, 2))
  np.testing.assert_allclose(grads["w"], dw, rtol=1e-5)
  # The codes move towards their vectors (codebook loss); the unused code gets no gradient.
  d_code = 2 * (z_q - z_e.reshape(2, 2)) / 4
  np.testing.assert_allclose(grads["codebook"][:2], d_code, rtol=1e-5)
  assert np.all(grads["codebook"][2] == 0)


def test_vq_ema_codebook_update_by_hand():
  codebook = np.array([[0.0, 0.0], [1.0, 1.0], [0.2, -0.4]])
  apply_fn, params = _fake_vq(codebook)
  x = np.array([[[[0.1, 0.2]], [[0.5, 0.6]]], [[[0.7, 0.8]], [[0.0, 0.1]]]], np.float32)  # B=2
  batch = {"image": np.zeros((2, 2, 2, 1), np.float32), "input": x, "position": jnp.arange(2)}
  fn = functools.partial(vq.vqvae, apply_fn=apply_fn, loss="mse", commitment=0.25, ema=True)
  def loss(p):
    loss_B, _, stats_B = fn(p, batch, None)
    return jnp.mean(loss_B), stats_B
  (_, stats_B), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  assert np.all(grads["codebook"] == 0)  # with EMA the codes get no gradient
  stats = jax.tree.map(lambda v: jnp.sum(v, 0), stats_B)
  z = 1.5 * x.reshape(4, 2).astype(np.float64)  # codes: 0, 1, 1, 0
  np.testing.assert_allclose(stats["vq_counts"], [2, 2, 0])
  np.testing.assert_allclose(stats["vq_sums"], [z[0] + z[3], z[1] + z[2], [0, 0]], rtol=1e-6)
  tx = vq.vq_ema(0.9, epsilon=1e-5)
  opt = tx.init(params)
  updates, opt = tx.update({"w": 0.0, "codebook": jnp.zeros(3)}, opt, params, **stats)
  size = 0.9 * 1 + 0.1 * np.array([2, 2, 0])
  embed = 0.9 * codebook + 0.1 * np.asarray(stats["vq_sums"])
  n = size.sum()
  new = embed / ((size + 1e-5) / (n + 3e-5) * n)[:, None]
  np.testing.assert_allclose(optax.apply_updates(params, updates)["codebook"], new, rtol=1e-5)
  np.testing.assert_allclose(opt.cluster_size, size, rtol=1e-6)


def test_vqvae_ema_train_step_moves_codes_to_the_mean_of_their_vectors():
  cfg, model, state, batch = _setup("vqvae", **{"vq.ema_decay": 0.5})
  step = jax.jit(train.bind_steps(cfg, model).train)
  new, m = step(state, {"image": batch["image"]}, jax.random.key(0))
  chex.assert_trees_all_equal_shapes(new.params, state.params)
  z = oracle.apply(model, state.params, batch["image"], "encode")
  _, codes = oracle.apply(model, state.params, z, "quantize")
  codes, z = np.asarray(codes).ravel(), np.asarray(z).reshape(-1, cfg.model.latent_dim)
  for k in np.unique(codes):
    n_k, s_k = np.sum(codes == k), z[codes == k].sum(0)
    # N = .5 + .5 n_k, m = .5 e_k + .5 s_k (before smoothing, which moves it by ~1e-5)
    want = (0.5 * np.asarray(state.params["codebook"][k]) + 0.5 * s_k) / (0.5 + 0.5 * n_k)
    np.testing.assert_allclose(new.params["codebook"][k], want, rtol=1e-3, atol=1e-5)
  assert set(m) == {"loss", "mse", "recon_loss", "commitment"}  # the statistics went to the optimizer


@pytest.mark.parametrize("objective", list(objectives.REGISTRY))
def test_every_objective_composes_with_corruption_binarisation_bf16_and_scan(objective):
  cfg, _, state, batch = _setup(objective, **{"vq.ema_decay": 0.9, "model.dtype": "bfloat16"})
  model = oracle.tiny_model(cfg)  # the same params, bf16 compute
  fn = objectives.bind(cfg, model.apply)
  corrupt = functools.partial(transforms.masking, nu=0.3)
  place = parallel.placement("jit", tuple(jax.devices()[:1]), B)
  step = place.compile(functools.partial(train.train_step, objective=fn, corrupt=corrupt, binarize=True))
  images = np.stack([batch["image"], batch["image"][::-1]])  # 2 steps in one compiled call (lax.scan)
  new, m = step(place.put_state(state), place.put_batches({"image": images}), jax.random.key(0), None)
  assert np.all(np.isfinite(np.asarray(m["loss"]))) and int(new.step) == 2
  ev = jax.jit(functools.partial(train.eval_step, objective=fn, corrupt=corrupt, binarize=True))(
      place.get_state(new).params, {"image": batch["image"], "mask": np.array([1, 1, 1, 0], bool),
                                    "position": np.arange(4)}, jax.random.key(1))
  assert {"loss", "recon_mse", "corruption_mse", "recon_from_clean_mse"} <= set(ev)


def test_binarisation_depends_on_step_key_and_index_only():
  x = jnp.full((3, 4, 4, 1), 0.3)
  a = transforms.binarize(jax.random.key(0), x, jnp.arange(3))
  b = transforms.binarize(jax.random.key(0), x[1:], jnp.arange(1, 3))
  np.testing.assert_array_equal(a[1:], b)  # example i gets the same draw wherever it sits
  assert set(np.unique(a)) <= {0.0, 1.0}
  big = transforms.binarize(jax.random.key(1), jnp.full((1, 100, 100, 1), 0.3), jnp.arange(1))
  assert abs(float(big.mean()) - 0.3) < 0.02
  assert not np.array_equal(a, transforms.binarize(jax.random.key(2), x, jnp.arange(3)))
