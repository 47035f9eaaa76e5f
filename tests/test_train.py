"""One train step against an independent float64 numpy model, Adam by hand, no recompiles."""

import functools
import json

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ae_jax import config as config_lib
from ae_jax import data, losses, objectives, train
from ae_jax.data import transforms
import oracle


def _objective(state, loss="mse"):
  return functools.partial(objectives.reconstruction.reconstruction, apply_fn=state.apply_fn, loss=loss)


def _setup(noise_kind="none"):
  cfg = oracle.tiny_config(noise__kind=noise_kind)
  model = oracle.tiny_model(cfg)
  state = train.create_train_state(model, cfg, jax.random.key(0))
  x = np.asarray(jax.random.uniform(jax.random.key(1), (4, 8, 8, 1)), np.float32)
  return cfg, model, state, x


def test_numpy_reference_matches_flax_forward():
  _, model, state, x = _setup()
  got = model.apply({"params": state.params}, x, method="logits")
  np.testing.assert_allclose(got, oracle.logits(state.params, x.astype(np.float64)),
                             rtol=1e-4, atol=1e-5)


def test_one_step_loss_gradient_and_adam_update():
  cfg, _, state, x = _setup()
  params0 = oracle.as64(state.params)
  step = jax.jit(functools.partial(train.train_step, objective=_objective(state)))  # not one compile per op
  new_state, m = step(state, {"image": x}, jax.random.key(2))
  x64 = x.astype(np.float64)
  np.testing.assert_allclose(m["loss"], oracle.mse_loss(params0, x64, x64), rtol=1e-5)

  # Gradient by central differences of the float64 reference, for a few entries.
  grads = jax.jit(jax.grad(lambda p: losses.reconstruction_loss(
      "mse", state.apply_fn({"params": p}, x, method="logits"), x)))(state.params)
  probes = [("encoder", "conv0", "kernel", (1, 1, 0, 0)), ("encoder", "latent", "kernel", (3, 1)),
            ("decoder", "deconv1", "kernel", (0, 2, 1, 1)), ("decoder", "to_pixels", "bias", (0,))]
  eps = 1e-6
  for path in probes:
    *where, idx = path
    plus, minus = oracle.as64(state.params), oracle.as64(state.params)
    leaf_p, leaf_m = plus, minus
    for k in where:
      leaf_p, leaf_m = leaf_p[k], leaf_m[k]
    leaf_p[idx] += eps
    leaf_m[idx] -= eps
    fd = (oracle.mse_loss(plus, x64, x64) - oracle.mse_loss(minus, x64, x64)) / (2 * eps)
    g = np.asarray(functools.reduce(lambda t, k: t[k], where, grads))[idx]
    np.testing.assert_allclose(g, fd, rtol=2e-3, atol=1e-9)

  # First Adam step by hand: m = (1-b1) g, v = (1-b2) g^2, bias-corrected -> g / (|g| + eps).
  def adam1(p, g):
    return p - cfg.learning_rate * g / (np.abs(g) + 1e-8)
  expected = jax.tree.map(adam1, params0, oracle.as64(grads))
  chex.assert_trees_all_close(oracle.as64(new_state.params), expected, rtol=1e-5, atol=1e-8)
  assert int(new_state.step) == 1


def test_denoising_step_uses_noise_from_seed_step_and_index():
  cfg, _, state, x = _setup("gaussian")
  # Larger weights make the freshly initialised output depend on its input.
  state = state.replace(step=jnp.asarray(7, jnp.int32),
                        params=jax.tree.map(lambda p: 3.0 * p, state.params))
  fn = transforms.corruption_fn(cfg.noise)
  key = jax.random.key(3)
  _, m = jax.jit(functools.partial(train.train_step, objective=_objective(state), corrupt=fn))(
      state, {"image": x}, key)
  # The contract, computed outside the step: example i gets fold_in(fold_in(key, step), i).
  noisy = np.stack([np.asarray(transforms.gaussian(jax.random.fold_in(jax.random.fold_in(key, 7), i),
                                              jnp.asarray(x[i]))) for i in range(4)])
  np.testing.assert_allclose(m["loss"], oracle.mse_loss(state.params, noisy.astype(np.float64),
                                                     x.astype(np.float64)), rtol=1e-5)
  _, m_clean = jax.jit(functools.partial(train.train_step, objective=_objective(state)))(
      state, {"image": x}, key)
  assert abs(float(m["loss"]) / float(m_clean["loss"]) - 1) > 1e-3


def test_jitted_step_compiles_once():
  _, _, state, x = _setup("masking")
  fn = transforms.corruption_fn(ml_collections.ConfigDict(dict(kind="masking", nu=0.3)))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(state, batch, key):
    return train.train_step(state, batch, key, objective=_objective(state, "bce"), corrupt=fn)

  losses = []
  for _ in range(4):
    state, m = step(state, {"image": x}, jax.random.key(0))
    losses.append(float(m["loss"]))
  assert int(state.step) == 4 and losses[-1] < losses[0]


def test_evaluate_pads_the_last_batch():
  _, model, state, x = _setup()
  images = np.concatenate([x, x[:3]])  # 7 examples: batches of 4 + 3 padded
  eval_fn = jax.jit(functools.partial(train.eval_step, objective=_objective(state)))
  out = train.evaluate(eval_fn, state.params, images, jax.random.key(0), batch_size=4)
  ref = np.mean((1 / (1 + np.exp(-oracle.logits(state.params, images.astype(np.float64))))
                 - images) ** 2)
  np.testing.assert_allclose(out["recon_mse"], ref, rtol=1e-5)
  np.testing.assert_allclose(out["loss"], ref, rtol=1e-5)  # the mse objective
  assert out["num_examples"] == 7
  np.testing.assert_allclose(out["recon_psnr"], 10 * np.log10(1 / ref), rtol=1e-5)


@pytest.mark.parametrize("n,batch,k", [(80, 8, 1), (80, 8, 3), (56, 8, 7), (40, 8, 8)])
def test_schedule_tiles_each_epoch_from_the_position_alone(n, batch, k):
  key = jax.random.key(5)
  schedule = data.Schedule(key, n, batch, num_epochs=2, steps_per_call=k)
  spe = n // batch
  calls = list(schedule.calls(0))
  assert calls[-1].end == schedule.total_steps == 2 * spe
  assert all(a.end == b.start for a, b in zip(calls, calls[1:]))
  assert all(0 < c.end - c.start <= k and c.epoch == c.start // spe for c in calls)
  assert [c.end for c in calls if c.epoch_done] == [spe, 2 * spe]
  for epoch in range(2):  # each epoch's batches are its order, in steps of `batch`
    rows = np.concatenate([c.indices_KB for c in calls if c.epoch == epoch])
    np.testing.assert_array_equal(rows.reshape(-1), data.epoch_order(key, epoch, n)[:spe * batch])
  for c in calls:  # a run resumed at any call end runs exactly the remaining calls
    rest = list(schedule.calls(c.end))
    assert [(r.start, r.end) for r in rest] == [(r.start, r.end) for r in calls if r.start >= c.end]
    assert all(np.array_equal(r.indices_KB, s.indices_KB) for r, s in
               zip(rest, [s for s in calls if s.start >= c.end]))


def test_itstime_is_one_predicate_for_every_cadence():
  assert [e for s, e in zip(range(0, 12), range(1, 13)) if train.itstime(s, e, 4)] == [4, 8, 12]
  assert train.itstime(2, 5, 4) and not train.itstime(4, 7, 4)  # a call of 3 steps crossing 4, or not


def test_log_window_means_and_restart():
  w = train.LogWindow()
  w.add({"loss": np.array([1.0, 3.0]), "mse": np.array([0.5, 0.5])})
  restored = train.LogWindow.from_meta(json.loads(json.dumps(w.to_meta())))  # through checkpoint meta
  restored.add({"loss": np.array([5.0]), "mse": np.array([2.0])})
  restored.add_wait(0.0)
  means, steps_per_s, waited = restored.flush()
  assert means == {"train_loss": 3.0, "train_mse": 1.0} and steps_per_s > 0 and waited == 0.0
  assert restored.to_meta() == {"steps": 0, "sums": {}}


def _cfg(**kw):
  c = config_lib.get_default()
  c.update(kw)
  return c


def test_warmup_cosine_schedule_and_its_check():
  lr = train.learning_rate(_cfg(lr_schedule="warmup_cosine", warmup_steps=4, learning_rate=0.1), 20)
  np.testing.assert_allclose([lr(0), lr(2), lr(4), lr(12), lr(20)],
                             [0.0, 0.05, 0.1, 0.05, 0.0], atol=1e-7)
  assert train.learning_rate(_cfg(), None) == 1e-3
  with pytest.raises(ValueError, match=r"^weight_decay=0.1: only optimizer='adamw' decays weights"):
    config_lib.validate(_cfg(weight_decay=0.1))


def test_gradient_clipping_and_adamw_weight_decay_by_hand():
  _, _, state, x = _setup()
  grads = {"w": np.array([3.0, 4.0], np.float32)}  # global norm 5
  tx = train.make_optimizer(_cfg(optimizer="sgd", learning_rate=0.5, grad_clip_norm=1.0))
  updates, _ = tx.update(grads, tx.init(grads), grads)
  np.testing.assert_allclose(updates["w"], -0.5 * np.array([0.6, 0.8]), rtol=1e-6)
  p = {"w": np.array([2.0], np.float32)}
  tx = train.make_optimizer(_cfg(optimizer="adamw", learning_rate=0.1, weight_decay=0.5))
  updates, _ = tx.update({"w": np.array([0.0], np.float32)}, tx.init(p), p)  # zero gradient: decay only
  np.testing.assert_allclose(updates["w"], [-0.1 * 0.5 * 2.0], rtol=1e-6)


def test_ema_of_the_params_is_kept_and_evaluated():
  _, model, state, x = _setup()
  cfg = _cfg(optimizer="sgd", learning_rate=0.1, ema_decay=0.5)
  state = train.create_train_state(model, cfg, jax.random.key(0))
  ema = oracle.as64(state.params)
  step = jax.jit(functools.partial(train.train_step, objective=_objective(state)))
  for _ in range(3):
    state, _ = step(state, {"image": x}, jax.random.key(2))
    ema = jax.tree.map(lambda e, p: 0.5 * e + 0.5 * p, ema, oracle.as64(state.params))  # by hand
  chex.assert_trees_all_close(oracle.as64(train.eval_params(state)), ema, rtol=1e-5, atol=1e-7)
  plain = _setup()[2]
  assert train.eval_params(plain) is plain.params  # without ema_decay: the params themselves
