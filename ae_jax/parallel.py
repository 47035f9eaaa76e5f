"""Wrappers that run one pure multi-step function on 1 device (jit), N devices (pmap) or a mesh.

The mesh spans every device of every process once `initialize_distributed` has
run (JAX's multi-controller runtime): each process then feeds only its rows of
each global batch (`Runner.local_rows`).
"""

from collections.abc import Callable
import functools
import os
import sys
import threading
from typing import Any, NamedTuple

from absl import logging
import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

AXIS = "data"


class Runner(NamedTuple):
  """How state and batches are laid out on devices, and the compiled step over that layout.

  step(state, batches, key, table=None) -> (state, metrics): batches are numpy
  leaves [K, B, ...] (K steps of global batch B) once passed through put_batches.
  With a `table` (put_table: the dataset, placed on the devices once), batches
  are {"index": int32 [K, B]} and each step gathers its examples from the table
  on device, so a call moves only indices from the host.
  """

  mode: str
  devices: tuple
  step: Callable
  put_state: Callable[[Any], Any]
  get_state: Callable[[Any], Any]  # one host copy of the state, numpy leaves
  put_batches: Callable[[Any], Any]  # this process's rows [K, local_rows, ...] -> global batches
  get_metrics: Callable[[Any], Any]  # metrics as numpy [K]
  local_rows: slice  # the rows of each global batch this process feeds
  put_table: Callable[[Any], Any]  # {name: [N, ...]} on every device, once per run


JOIN_TIMEOUT_EXIT = 5


def initialize_distributed(coordinator_address: str | None, num_processes: int | None,
                           process_id: int | None, *, timeout_s: int = 300,
                           peer_timeout_s: int = 100) -> None:
  """Joins JAX's multi-controller runtime (`jax.distributed`); call before any other JAX call.

  None arguments are left to JAX, which finds them on TPU pods, SLURM, Open MPI
  and Kubernetes. If the processes have not all joined within timeout_s, this
  process prints one line saying so and exits with status 5 (JAX itself would
  abort a little later, blaming "another task"). Once running, a process whose
  peer stops answering for peer_timeout_s is terminated by JAX with a message
  that another task died, rather than waiting forever in a collective.
  """
  joined = threading.Event()

  def watchdog():
    if not joined.wait(timeout_s):
      sys.stderr.write(
          f"error: jax.distributed: process {process_id} of {num_processes} did not see all "
          f"processes join at coordinator {coordinator_address} within {timeout_s} s; start every "
          "process with the same --coordinator_address and --num_processes\n")
      sys.stderr.flush()
      os._exit(JOIN_TIMEOUT_EXIT)  # the main thread is blocked inside the runtime's C++ code

  threading.Thread(target=watchdog, daemon=True).start()
  logging.info("joining jax.distributed as process %s of %s at %s (timeout %d s)", process_id,
               num_processes, coordinator_address, timeout_s)
  jax.distributed.initialize(coordinator_address, num_processes, process_id,
                             initialization_timeout=timeout_s + 30,
                             heartbeat_timeout_seconds=peer_timeout_s)
  joined.set()
  logging.info("joined: process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def select_devices(num_devices: int | None, mode: str = "mesh") -> tuple:
  """The devices a run uses: all of them (of every process, for a multi-process mesh) or the first N."""
  if jax.process_count() > 1:
    if mode != "mesh":
      raise ValueError(f"parallel={mode!r}: a run of {jax.process_count()} processes needs "
                       "parallel='mesh', the only wrapper that spans processes")
    if num_devices not in (None, jax.device_count()):
      raise ValueError(f"num_devices={num_devices}: a multi-process run uses all "
                       f"{jax.device_count()} devices of its {jax.process_count()} processes")
    return tuple(jax.devices())
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


def gather(table, batch):
  """The batch itself, or with a table, the table's rows at batch['index']."""
  if table is None:
    return batch
  return {name: values[batch["index"]] for name, values in table.items()}


def multi_step(step_fn: Callable, state, batches, key, table=None, **kwargs):
  """Applies step_fn to K stacked batches; K == 1 skips the scan (faster on XLA:CPU)."""
  k = jax.tree.leaves(batches)[0].shape[0]
  if k == 1:
    batch = gather(table, jax.tree.map(lambda x: x[0], batches))
    state, metrics = step_fn(state, batch, key, **kwargs)
    return state, jax.tree.map(lambda m: m[None], metrics)
  return jax.lax.scan(lambda s, b: step_fn(s, gather(table, b), key, **kwargs), state, batches)


def _with_table(compiled: Callable) -> Callable:
  """step(state, batches, key, table=None): the compiled step always takes the table argument."""
  def step(state, batches, key, table=None):
    return compiled(state, batches, key, table)
  return step


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
    return Runner(mode, devices, _with_table(step),
                  put_state=lambda s: jax.device_put(s, device),
                  get_state=_host,
                  put_batches=lambda b: jax.device_put(b, device),
                  get_metrics=_host, local_rows=slice(0, batch_size),
                  put_table=lambda t: jax.device_put(t, device))

  if mode == "pmap":
    n = len(devices)
    step = jax.pmap(functools.partial(multi_step, step_fn, axis_name=AXIS), axis_name=AXIS,
                    in_axes=(0, 0, None, 0), donate_argnums=0, devices=devices)
    # pmap's per-device leading axis, laid out as one array sharded over it.
    per_device = NamedSharding(Mesh(np.asarray(devices), (AXIS,)), P(AXIS))

    def put_state(s):  # also a table: one copy per device
      return jax.device_put(
          jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n, *np.shape(x))), s), per_device)

    def put_batches(b):
      # [K, B, ...] -> [D, K, B/D, ...]: device d gets examples d*B/D .. (d+1)*B/D - 1.
      def split(x):
        return np.swapaxes(x.reshape(x.shape[0], n, x.shape[1] // n, *x.shape[2:]), 0, 1)
      return jax.device_put(jax.tree.map(split, b), per_device)

    return Runner(mode, devices, _with_table(step), put_state=put_state,
                  get_state=lambda s: _host(jax.tree.map(lambda x: x[0], s)),
                  put_batches=put_batches,
                  get_metrics=lambda m: _host(jax.tree.map(lambda x: x[0], m)),
                  local_rows=slice(0, batch_size), put_table=put_state)

  if mode == "mesh":
    mesh = Mesh(np.asarray(devices), (AXIS,))
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P(None, AXIS))  # [K, B, ...]: split B
    step = jax.jit(functools.partial(multi_step, step_fn), donate_argnums=0,
                   in_shardings=(replicated, batch_sharding, replicated, replicated),
                   out_shardings=(replicated, replicated))
    # This process's devices hold one contiguous block of rows of every global batch.
    index_map = batch_sharding.addressable_devices_indices_map((1, batch_size))
    starts = sorted(idx[1].start or 0 for idx in index_map.values())
    rows = slice(starts[0], starts[-1] + batch_size // len(devices))
    if rows.stop - rows.start != batch_size // len(devices) * len(index_map):
      raise ValueError(f"this process's devices do not hold one block of rows: {index_map}")

    def put_batches(b):
      return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
          batch_sharding, x, (x.shape[0], batch_size, *x.shape[2:])), b)

    def put_state(s):  # also a table
      # Every process holds the same host state; each fills its own devices from it
      # (device_put across processes would first compare the values over the network).
      def fill(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, replicated, lambda idx: x[idx])
      return jax.tree.map(fill, s)

    return Runner(mode, devices, _with_table(step),
                  put_state=put_state,
                  get_state=_host,
                  put_batches=put_batches,
                  get_metrics=_host, local_rows=rows, put_table=put_state)

  raise ValueError(f"parallel={mode!r}: expected one of ('jit', 'pmap', 'mesh')")
