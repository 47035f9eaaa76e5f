r"""Trains a few steps under each parallel wrapper and prints how far each is from one device.

  JAX_NUM_CPU_DEVICES=4 python -m experiments.wrapper_agreement

Same global batches, same seed: jit on 1 device is the reference; pmap and mesh
over all local devices, and jit/pmap with 2 steps per compiled call (lax.scan).
"""


from absl import app, flags
import jax
import numpy as np

from ae_jax import config as config_lib
from ae_jax import layers, metrics, models, parallel, train

distance = metrics.relative_distance

_STEPS = flags.DEFINE_integer("steps", 4, "Train steps.")
_BATCH = flags.DEFINE_integer("batch", 16, "Global batch size.")
_IMPL = flags.DEFINE_enum("conv_impl", "auto", ["auto", *layers.IMPLS], "Conv implementation.")


def train_steps(mode: str, devices: tuple, steps: int = 4, batch: int = 16,
                steps_per_call: int = 1, kind: str = "gaussian", conv_impl: str = "auto",
                on_device: bool = False, objective: str = "ae", binarize: bool = False):
  """(host state, per-step losses) after `steps` steps of the reference DAE (or `objective`,
  with the EMA codebook for vqvae) on fixed batches.

  on_device: the images go to the devices once (put_table) and each call
  sends only indices, as experiments.train does by default.
  """
  cfg = config_lib.get_default()
  cfg.noise.kind = kind
  cfg.objective = objective
  cfg.model.conv_impl = conv_impl
  if objective == "vqvae":
    cfg.vq.ema_decay = 0.9  # its statistics are summed over the devices
  cfg.data.binarize = "dynamic" if binarize else None
  model = models.from_config(cfg, (28, 28, 1))
  state = train.create_train_state(model, cfg, jax.random.key(0))
  place = parallel.placement(mode, devices, batch)
  step, _, _ = train.compile_steps(cfg, model, place)
  images = np.asarray(jax.random.uniform(jax.random.key(1), (steps, batch, 28, 28, 1)))
  table = place.put_table({"image": images.reshape(steps * batch, 28, 28, 1)}) if on_device else None
  index = np.arange(steps * batch, dtype=np.int32).reshape(steps, batch)
  dstate, losses = place.put_state(state), []
  for start in range(0, steps, steps_per_call):
    chunk = slice(start, start + steps_per_call)
    batches = {"index": index[chunk]} if on_device else {"image": images[chunk]}
    dstate, m = step(dstate, place.put_batches(batches), jax.random.key(2), table)
    losses += list(place.get_metrics(m)["loss"])
  return place.get_state(dstate), np.asarray(losses)


def main(argv):
  del argv
  devices = tuple(jax.devices())
  one = devices[:1]
  ref, ref_losses = train_steps("jit", one, _STEPS.value, _BATCH.value, conv_impl=_IMPL.value)
  init = train.create_train_state(models.Autoencoder(), config_lib.get_default(), jax.random.key(0))
  print(f"{len(devices)} {devices[0].platform} devices; {_STEPS.value} steps of global batch "
        f"{_BATCH.value}; params moved {distance(init.params, ref.params):.3e} (relative) from init")
  for name, mode, devs, k in [("pmap", "pmap", devices, 1), ("mesh", "mesh", devices, 1),
                              ("jit, 2 steps/call", "jit", one, 2),
                              ("pmap, 2 steps/call", "pmap", devices, 2)]:
    state, losses = train_steps(mode, devs, _STEPS.value, _BATCH.value, k, conv_impl=_IMPL.value)
    loss_err = float(np.max(np.abs(losses / ref_losses - 1)))
    print(f"{name:20s} vs jit on 1 device: params rel. diff {distance(state.params, ref.params):.2e}, "
          f"max loss rel. diff {loss_err:.2e}")


if __name__ == "__main__":
  app.run(main)
