"""What GPU and TPU users run lowers for them: jax.export of every objective's steps, no accelerator.

jax.export lowers for a platform this machine does not have and refuses custom
calls without a stability guarantee (a host callback, a CPU-only kernel), so a
step that exports for 'cuda' and 'tpu' holds nothing CPU-only. pmap cannot be
exported (jax.export takes jit only); its step function is the one exported here.
"""

import functools

import jax
import numpy as np
import pytest

from ae_jax import config as config_lib
from ae_jax import objectives, parallel, train
from ae_jax.models import layers

ACCELERATORS = ("cuda", "tpu")
B = 8


def _config(objective):
  cfg = config_lib.get_default()
  cfg.objective, cfg.noise.kind, cfg.batch_size = objective, "masking", B
  cfg.data.binarize = "dynamic" if objective in ("vae", "iwae") else "none"
  cfg.vq.ema_decay = 0.99 if objective == "vqvae" else None
  # What 'auto' resolves to on the accelerators; it must resolve the same on both.
  impl, k = {layers.resolve("auto", p) for p in ACCELERATORS}, {
      train.resolve_steps_per_call(None, p) for p in ACCELERATORS}
  assert len(impl) == 1 and len(k) == 1
  cfg.model.conv_impl, cfg.steps_per_call = impl.pop(), k.pop()
  return cfg


def _steps(cfg, devices):
  """The train step as train_and_evaluate compiles it (data on device), the eval step, and their args."""
  model = train.build_model(cfg, (28, 28, 1))
  place = parallel.placement("mesh", devices, B)
  steps = train.bind_steps(cfg, model)
  step, eval_fn = place.compile(steps.train), jax.jit(steps.eval)
  state = place.put_state(train.create_train_state(model, cfg, jax.random.key(0)))
  table = place.put_table({"image": np.zeros((32, 28, 28, 1), np.uint8)})  # uint8, as the sources give
  rows = np.arange(cfg.steps_per_call * B, dtype=np.int32).reshape(cfg.steps_per_call, B)
  train_args = (state, place.put_batches({"index": rows}), jax.random.key(1), table)
  eval_args = (place.get_state(state).params, {"image": np.zeros((B, 28, 28, 1), np.float32),
                                               "mask": np.ones(B, bool), "position": np.arange(B)},
               jax.random.key(2))
  return (step, train_args), (eval_fn, eval_args)


@pytest.mark.parametrize("objective", list(objectives.REGISTRY))
def test_train_and_eval_steps_export_for_gpu_and_tpu(objective):
  cfg = _config(objective)
  for devices in (tuple(jax.devices()[:1]), tuple(jax.devices())):  # jit, and mesh over 4 devices
    (step, train_args), (eval_fn, eval_args) = _steps(cfg, devices)
    exported = jax.export.export(step, platforms=list(ACCELERATORS))(*train_args)
    assert exported.platforms == ACCELERATORS and exported.nr_devices == len(devices)
    assert "lhs_dilate = [2, 2]" in exported.mlir_module()  # conv_impl xla: XLA's transposed convs
  exported = jax.export.export(eval_fn, platforms=list(ACCELERATORS))(*eval_args)  # eval: one device
  assert exported.platforms == ACCELERATORS and exported.nr_devices == 1


def test_a_host_callback_in_the_step_would_fail_the_export():
  # The check above can fail: the same train step with a host callback inside does not export.
  cfg = _config("ae")
  model = train.build_model(cfg, (28, 28, 1))
  inner = objectives.bind(cfg, model.apply)

  def objective(params, batch, key):
    loss_B, metrics_B, stats_B = inner(params, batch, key)
    jax.debug.callback(lambda x: None, loss_B)
    return loss_B, metrics_B, stats_B

  place = parallel.placement("jit", tuple(jax.devices()[:1]), B)
  step = place.compile(functools.partial(train.train_step, objective=objective))
  state = place.put_state(train.create_train_state(model, cfg, jax.random.key(0)))
  batches = place.put_batches({"image": np.zeros((1, B, 28, 28, 1), np.float32)})
  for platform in ACCELERATORS:  # one at a time: jax 0.10 fails to lower callbacks for two at once
    with pytest.raises(ValueError, match="custom call|lowering platform"):
      jax.export.export(step, platforms=[platform])(state, batches, jax.random.key(1), None)


def test_auto_settings_resolve_per_platform():
  assert layers.resolve("auto", "cpu") == "onednn"  # the install built its extension
  assert layers.resolve("auto", "cuda") == layers.resolve("auto", "tpu") == "xla"
  assert train.resolve_steps_per_call(None, "cpu") == 1
  assert train.resolve_steps_per_call(None, "cuda") == train.resolve_steps_per_call(None, "tpu") == 1
  assert train.resolve_steps_per_call(4, "cpu") == 4
  assert train.build_model(_config("ae"), (28, 28, 1)).encoder.conv_impl == "xla"


@pytest.mark.parametrize("objective,latent_grid", [("ae", False), ("vae", True), ("vqvae", False)])
def test_resnet_train_step_exports_for_gpu_and_tpu_with_every_latent_head(objective, latent_grid):
  # A dense vector, a Gaussian per position of the grid, a quantised grid; mesh over 4 devices.
  cfg = _config(objective)
  cfg.model.update(name="resnet", channels=8, channel_mult=(1, 2), num_res_blocks=1, norm_groups=4,
                   latent_dim=4, latent_grid=latent_grid, attention_resolutions=(8,))
  model = train.build_model(cfg, (16, 16, 3))
  devices = tuple(jax.devices())
  place = parallel.placement("mesh", devices, B)
  step = place.compile(train.bind_steps(cfg, model).train)
  state = place.put_state(train.create_train_state(model, cfg, jax.random.key(0)))
  batches = place.put_batches({"image": np.zeros((cfg.steps_per_call, B, 16, 16, 3), np.uint8)})
  exported = jax.export.export(step, platforms=list(ACCELERATORS))(state, batches, jax.random.key(1), None)
  assert exported.platforms == ACCELERATORS and exported.nr_devices == len(devices)
