"""Wrappers that run one pure multi-step function on 1 device (jit), N devices (pmap) or a mesh."""

from collections.abc import Callable
import functools
from typing import Any, NamedTuple

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

AXIS = "data"


class Runner(NamedTuple):
  """How state and batches are laid out on devices, and the compiled step over that layout.

  step(state, batches, key) -> (state, metrics): batches are numpy leaves
  [K, B, ...] (K steps of global batch B) once passed through put_batches.
  """

  mode: str
  devices: tuple
  step: Callable
  put_state: Callable[[Any], Any]
  get_state: Callable[[Any], Any]  # one host copy of the state, numpy leaves
  put_batches: Callable[[Any], Any]
  get_metrics: Callable[[Any], Any]  # metrics as numpy [K]


def select_devices(num_devices: int | None) -> tuple:
  devices = jax.local_devices()
  if num_devices is None:
    return tuple(devices)
  if num_devices > len(devices):
    raise ValueError(f"num_devices={num_devices}: only {len(devices)} local devices "
                     f"({devices[0].platform}) are available")
  return tuple(devices[:num_devices])


def check_batch(batch_size: int, devices: tuple, mode: str) -> None:
  if batch_size % len(devices):
    raise ValueError(
        f"batch_size={batch_size}: does not divide across {len(devices)} devices "
        f"(parallel={mode!r}); use a multiple of {len(devices)}")


def multi_step(step_fn: Callable, state, batches, key, **kwargs):
  """Applies step_fn to K stacked batches; K == 1 skips the scan (faster on XLA:CPU)."""
  k = jax.tree.leaves(batches)[0].shape[0]
  if k == 1:
    state, metrics = step_fn(state, jax.tree.map(lambda x: x[0], batches), key, **kwargs)
    return state, jax.tree.map(lambda m: m[None], metrics)
  return jax.lax.scan(lambda s, b: step_fn(s, b, key, **kwargs), state, batches)


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def make_runner(mode: str, step_fn: Callable, devices: tuple, batch_size: int) -> Runner:
  """Compiles step_fn(state, batch, key, axis_name=...) for `mode` over `devices`."""
  check_batch(batch_size, devices, mode)
  if mode == "jit":
    if len(devices) != 1:
      raise ValueError(f"parallel='jit' runs on one device, got num_devices={len(devices)}; "
                       "use parallel='pmap' or 'mesh' for more")
    device = devices[0]
    step = jax.jit(functools.partial(multi_step, step_fn), donate_argnums=0)
    return Runner(mode, devices, step,
                  put_state=lambda s: jax.device_put(s, device),
                  get_state=_host,
                  put_batches=lambda b: jax.device_put(b, device),
                  get_metrics=_host)

  if mode == "pmap":
    n = len(devices)
    step = jax.pmap(functools.partial(multi_step, step_fn, axis_name=AXIS), axis_name=AXIS,
                    in_axes=(0, 0, None), donate_argnums=0, devices=devices)
    # pmap's per-device leading axis, laid out as one array sharded over it.
    per_device = NamedSharding(Mesh(np.asarray(devices), (AXIS,)), P(AXIS))

    def put_state(s):
      return jax.device_put(
          jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n, *np.shape(x))), s), per_device)

    def put_batches(b):
      # [K, B, ...] -> [D, K, B/D, ...]: device d gets examples d*B/D .. (d+1)*B/D - 1.
      def split(x):
        return np.swapaxes(x.reshape(x.shape[0], n, x.shape[1] // n, *x.shape[2:]), 0, 1)
      return jax.device_put(jax.tree.map(split, b), per_device)

    return Runner(mode, devices, step, put_state=put_state,
                  get_state=lambda s: _host(jax.tree.map(lambda x: x[0], s)),
                  put_batches=put_batches,
                  get_metrics=lambda m: _host(jax.tree.map(lambda x: x[0], m)))

  if mode == "mesh":
    mesh = Mesh(np.asarray(devices), (AXIS,))
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P(None, AXIS))  # [K, B, ...]: split B
    step = jax.jit(functools.partial(multi_step, step_fn), donate_argnums=0,
                   in_shardings=(replicated, batch_sharding, replicated),
                   out_shardings=(replicated, replicated))
    return Runner(mode, devices, step,
                  put_state=lambda s: jax.device_put(s, replicated),
                  get_state=_host,
                  put_batches=lambda b: jax.device_put(b, batch_sharding),
                  get_metrics=_host)

  raise ValueError(f"parallel={mode!r}: expected one of ('jit', 'pmap', 'mesh')")
