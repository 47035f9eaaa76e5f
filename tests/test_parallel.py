"""jit, pmap and mesh wrappers over one pure step agree with single-device training."""

import functools

import jax
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from ae_jax import metrics, parallel, train
import wrappers

STEPS, BATCH = 4, 16


def _run(mode, devices, steps_per_call=1, kind="gaussian", on_device=False):
  return _train(mode, devices, steps_per_call, kind, on_device)


@functools.lru_cache  # tests that need the same run share it (e.g. jit with 2 steps per call)
def _train(mode, devices, steps_per_call, kind, on_device):
  return wrappers.train_steps(mode, devices, STEPS, BATCH, steps_per_call, kind,
                                       on_device=on_device)


@pytest.fixture(scope="module")
def single():
  return _run("jit", tuple(jax.devices()[:1]))


def test_four_cpu_devices_present():
  assert len(jax.devices()) == 4


@pytest.mark.parametrize("mode", ["pmap", "mesh"])
def test_wrappers_agree_with_single_device(single, mode):
  ref_state, ref_losses = single
  state, losses = _run(mode, tuple(jax.devices()))
  assert int(state.step) == STEPS
  err = metrics.relative_distance(state.params, ref_state.params)
  assert err < 1e-5, f"{mode}: relative parameter difference {err:.2e}"
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  # Training moved the parameters far more than the tolerance.
  init = train.create_train_state(train.build_model(wrappers.config(), wrappers.SHAPE), wrappers.config(),
                                  jax.random.key(0))
  assert metrics.relative_distance(init.params, ref_state.params) > 1e-3


@pytest.mark.parametrize("mode", ["jit", "pmap"])
def test_scan_driver_agrees_with_per_step(single, mode):
  ref_state, ref_losses = single
  devices = tuple(jax.devices()[:1]) if mode == "jit" else tuple(jax.devices())
  state, losses = _run(mode, devices, 2)
  assert metrics.relative_distance(state.params, ref_state.params) < 1e-5
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)


@pytest.mark.parametrize("mode,k", [("jit", 1), ("jit", 2), ("pmap", 1), ("mesh", 2)])
def test_data_on_device_gives_the_same_steps(single, mode, k):
  # The dataset placed once and gathered by index inside the step, vs batches sent from the host.
  devices = tuple(jax.devices()[:1]) if mode == "jit" else tuple(jax.devices())
  host = single if (mode, k) == ("jit", 1) else _run(mode, devices, k)
  state, losses = _run(mode, devices, k, on_device=True)
  assert metrics.relative_distance(state.params, host[0].params) < 1e-6
  np.testing.assert_allclose(losses, host[1], rtol=1e-6)


@pytest.mark.parametrize("objective,binarize,ema_scale", [
    ("vae", True, False), ("vqvae", False, False), ("vae", False, True), ("beta_tcvae", True, False),
    ("factor_vae", True, False), ("dip_vae", True, False), ("annealed_vae", True, False)])
def test_wrappers_agree_for_the_vae_and_the_ema_vqvae(objective, binarize, ema_scale):
  # Latent samples and binarisation from fold_in keys per (step, global index); the EMA
  # codebook's and the EMA scale's statistics summed over the devices; the batch statistics of
  # the coupled objectives (β-TCVAE's q(z), DIP-VAE's covariance, AnnealedVAE's mean KL,
  # FactorVAE's shuffles) over the global batch, gathered under pmap, with their gradients.
  runs = {mode: wrappers.train_steps(mode, tuple(jax.devices()[:1]) if mode == "jit" else
                                              tuple(jax.devices()), STEPS, BATCH, kind="none",
                                              objective=objective, binarize=binarize, ema_scale=ema_scale)
          for mode in ("jit", "pmap", "mesh")}
  ref_state, ref_losses = runs["jit"]
  for mode in ("pmap", "mesh"):
    state, losses = runs[mode]
    err = metrics.relative_distance(state.params, ref_state.params)
    assert err < 1e-5, f"{objective} {mode}: relative parameter difference {err:.2e}"
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  init = train.create_train_state(train.build_model(wrappers.config(objective, ema_scale), wrappers.SHAPE),
                                  wrappers.config(objective, ema_scale), jax.random.key(0))
  assert metrics.relative_distance(init.params, ref_state.params) > 1e-3
  if ema_scale:
    assert np.all(ref_state.params["log_scale"] < -0.5), ref_state.params["log_scale"]  # fit, from 0


@pytest.mark.parametrize("model_shards", [2, 4])
def test_sharded_params_train_as_the_replicated_ones(model_shards):
  # A (4 / N) x N mesh: the kernels of >= 1,024 elements split along their output axis over N devices.
  devices = tuple(jax.devices())
  replicated = wrappers.train_steps("mesh", devices, STEPS, BATCH, kind="none")
  sharded = wrappers.train_steps("mesh", devices, STEPS, BATCH, kind="none", model_shards=model_shards,
                                 shard_min_size=1024)
  err = metrics.relative_distance(sharded[0].params, replicated[0].params)
  assert err < 1e-5, f"relative parameter difference {err:.2e}"
  np.testing.assert_allclose(sharded[1], replicated[1], rtol=1e-5)
  # Where the state lives: Adam's moments split like their kernels; small leaves replicated.
  cfg = wrappers.config()
  state = train.create_train_state(train.build_model(cfg, wrappers.SHAPE), cfg, jax.random.key(0))
  place = parallel.placement("mesh", devices, BATCH, model_shards, 1024)
  dstate = place.put_state(state)
  kernel = dstate.params["decoder"]["deconv0"]["kernel"]
  mu = dstate.opt_state[0].mu["decoder"]["deconv0"]["kernel"]
  assert kernel.shape == (3, 3, 16, 16) and kernel.sharding.spec == P(None, None, None, "model")
  assert {s.data.shape for s in kernel.addressable_shards} == {(3, 3, 16, 16 // model_shards)}
  assert mu.sharding.spec == kernel.sharding.spec
  assert dstate.params["decoder"]["deconv0"]["bias"].sharding.is_fully_replicated
  assert sum(not x.sharding.is_fully_replicated for x in jax.tree.leaves(dstate.params)) >= 3
  # A step keeps the state where it was (out_shardings).
  step = place.compile(train.bind_steps(cfg, train.build_model(cfg, wrappers.SHAPE)).train, state)
  images = np.zeros((1, BATCH, *wrappers.SHAPE), np.float32)
  after, _ = step(dstate, place.put_batches({"image": images}), jax.random.key(2), None)
  assert jax.tree.map(lambda x: x.sharding.spec, after.params) == jax.tree.map(lambda x: x.sharding.spec,
                                                                                 place.put_state(state).params)
  with pytest.raises(ValueError, match=r"^model.shard=3: does not divide the 4 devices"):
    parallel.placement("mesh", devices, BATCH, 3)
  with pytest.raises(ValueError, match=r"^model.shard=2: sharded params need parallel='mesh'"):
    parallel.placement("pmap", devices, BATCH, 2)


def test_two_devices_agree_too(single):
  state, _ = _run("pmap", tuple(jax.devices()[:2]))
  assert metrics.relative_distance(state.params, single[0].params) < 1e-5


def test_indivisible_batch_is_refused():
  with pytest.raises(ValueError, match=r"batch_size=30: does not divide across 4 devices "
                                       r"\(parallel='pmap'\); use a multiple of 4"):
    parallel.placement("pmap", tuple(jax.devices()), 30)


def test_jit_needs_one_device_and_unknown_mode():
  with pytest.raises(ValueError, match="parallel='jit' runs on one device"):
    parallel.placement("jit", tuple(jax.devices()), 32)
  with pytest.raises(ValueError, match="parallel='dp'"):
    parallel.placement("dp", tuple(jax.devices()[:1]), 32)


def test_one_interface_for_every_placement():
  state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
  for mode, devices in (("jit", jax.devices()[:1]), ("mesh", jax.devices()), ("pmap", jax.devices())):
    place = parallel.placement(mode, tuple(devices), 8)
    assert place.local_rows == slice(0, 8)  # one process feeds every row
    np.testing.assert_array_equal(place.get_state(place.put_state(state))["w"], state["w"])
  with pytest.raises(ValueError, match="num_devices=8: only 4 local devices"):
    parallel.select_devices(8)
