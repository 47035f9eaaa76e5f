"""A few train steps under each parallel wrapper on fixed batches, for the agreement tests."""


import jax
import numpy as np

from ae_jax import config as config_lib
from ae_jax import parallel, train

# The reference architecture, smaller: the wrappers' agreement does not depend on the size, and the
# scan-driver tests compile convolutions inside lax.scan, which XLA:CPU makes slow.
SHAPE = (16, 16, 1)


def config(objective: str = "ae", ema_scale: bool = False):
  """ema_scale: the VAE's discretized Gaussian with its per-channel EMA scale."""
  c = config_lib.get_default()
  c.objective = objective
  c.model.filters, c.model.latent_dim = (8, 16), 8
  if objective == "vqvae":
    c.vq.ema_decay = 0.9  # its statistics are summed over the devices
  c.factor_vae.widths = (32, 32)
  if ema_scale:  # its statistics too
    c.vae.likelihood, c.vae.scale_fit, c.vae.scale_decay = "discretized_gaussian", "ema", 0.5
  return c


def train_steps(mode: str, devices: tuple, steps: int = 4, batch: int = 16,
                steps_per_call: int = 1, kind: str = "gaussian", conv_impl: str = "auto",
                on_device: bool = False, objective: str = "ae", binarize: bool = False,
                ema_scale: bool = False, model_shards: int = 1, shard_min_size: int = 1 << 14):
  """(host state, per-step losses) after `steps` steps of a small reference DAE (or `objective`,
  with the EMA codebook for vqvae) on fixed batches of SHAPE images.

  on_device: the images go to the devices once (put_table) and each call
  sends only indices, as experiments.train does by default. model_shards > 1
  (mesh): the state's leaves of at least shard_min_size elements split over a
  second mesh axis.
  """
  cfg = config(objective, ema_scale)
  cfg.noise.kind = kind
  cfg.model.conv_impl = conv_impl
  cfg.data.binarize = "dynamic" if binarize else "none"
  model = train.build_model(cfg, SHAPE)
  state = train.create_train_state(model, cfg, jax.random.key(0))
  place = parallel.placement(mode, devices, batch, model_shards, shard_min_size)
  step = place.compile(train.bind_steps(cfg, model).train, state)
  images = np.asarray(jax.random.uniform(jax.random.key(1), (steps, batch, *SHAPE)))
  table = place.put_table({"image": images.reshape(steps * batch, *SHAPE)}) if on_device else None
  index = np.arange(steps * batch, dtype=np.int32).reshape(steps, batch)
  dstate, losses = place.put_state(state), []
  for start in range(0, steps, steps_per_call):
    chunk = slice(start, start + steps_per_call)
    batches = {"index": index[chunk]} if on_device else {"image": images[chunk]}
    dstate, m = step(dstate, place.put_batches(batches), jax.random.key(2), table)
    losses += list(place.get_metrics(m)["loss"])
  return place.get_state(dstate), np.asarray(losses)
