"""Placement: where state, batches and the dataset live, and the pure step compiled over that layout.

`placement(mode, devices, batch_size)` gives one interface (`compile`,
`put_state`/`get_state`, `put_batches`, `put_table`, `get_metrics`,
`local_rows`) for 1 device (jit), a `Mesh` over N devices or over every device
of every process (once `initialize_distributed` has run), and `pmap`.
"""

from collections.abc import Callable
import functools
import itertools
import math
import os
import sys
import threading

from absl import logging
import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import orbax.checkpoint as ocp

AXIS = "data"
MODEL_AXIS = "model"  # model.shard > 1: the large kernels' output axis is split along it
MODES = ("jit", "pmap", "mesh")
JOIN_TIMEOUT_EXIT = 5
BARRIER_TIMEOUT_S = 3600  # a slow compile; a process that dies ends the others sooner (peer_timeout_s)
SHARD_MIN_SIZE = 1 << 14  # model.shard_min_size's default
_barriers = itertools.count()  # every process meets the same barriers in the same order: keys pair up


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


def wait_for_every_process(name: str, timeout_s: int = BARRIER_TIMEOUT_S) -> None:
  """A barrier on the coordination service (not a collective, so no 30 s gloo deadline); a no-op in
  a single process. Each call's key is numbered, so the same name may come again."""
  if jax.process_count() > 1:
    ocp.multihost.get_barrier_sync_fn()(key=f"ae_jax {next(_barriers)}: {name}", timeout_ms=timeout_s * 1000)


def compiled_together(jitted: Callable) -> Callable:
  """`jitted`, compiled for each new input shape by every process before any runs it.

  XLA:CPU's gloo collectives wait 30 s for a peer: a process that compiles slower
  than the others (a busy host) would otherwise make them fail in the first
  collective. Every process sees the same shapes in the same order (the
  schedule is a function of the position), so the barriers pair up. Over
  several processes the result is a plain function (no `.lower`, no export).
  """
  if jax.process_count() == 1:
    return jitted
  compiled = []

  def call(*args):
    leaves, treedef = jax.tree.flatten(args)
    shapes = (treedef, tuple((np.shape(x), getattr(x, "dtype", type(x))) for x in leaves))
    if shapes not in compiled:
      jitted.lower(*args).compile()  # cached: the call below reuses this executable
      compiled.append(shapes)
      wait_for_every_process(f"step compiled for input shapes {len(compiled)}")
    return jitted(*args)
  return call


def _fill(tree, sharding_of: Callable):
  """Each leaf on its devices as sharding_of(its shape) says. Every process holds the same host values
  and fills its own devices from them (device_put across processes would first compare the values over
  the network)."""
  def fill(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding_of(x.shape), lambda idx: x[idx])
  return jax.tree.map(fill, tree)


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


class MeshPlacement:
  """Batches split along the `data` axis of a `Mesh(devices, ('data', 'model'))`; the dataset and,
  by default, the state replicated.

  One device is the `jit` case. Over several processes (jax.distributed) each
  process holds one contiguous block of rows of every global batch
  (`local_rows`) and feeds only those; the compiler inserts the collectives.
  With model_shards = N > 1 the mesh is (devices / N) x N and every state leaf
  of at least shard_min_size elements whose last axis N divides (the kernels'
  output features; the optimizer's moments and the params EMA alike, by shape)
  is split along `model`: each device holds 1/N of it, and XLA's SPMD
  partitioner adds the gathers. The rest stays replicated.
  """

  def __init__(self, devices: tuple, batch_size: int, model_shards: int = 1,
               shard_min_size: int = SHARD_MIN_SIZE):
    self.devices = tuple(devices)
    if len(self.devices) % model_shards:
      raise ValueError(f"model.shard={model_shards}: does not divide the {len(self.devices)} devices")
    if model_shards > 1 and jax.process_count() > 1:
      raise ValueError(f"model.shard={model_shards}: sharded params are for one process's devices; a "
                       "multi-process run replicates them (model.shard=1)")
    self.model_shards, self.shard_min_size = model_shards, shard_min_size
    grid = np.asarray(self.devices).reshape(len(self.devices) // model_shards, model_shards)
    self.mesh = Mesh(grid, (AXIS, MODEL_AXIS))
    self._replicated = NamedSharding(self.mesh, P())
    self._batches = NamedSharding(self.mesh, P(None, AXIS))  # [K, B, ...]: split B
    self._batch_size = batch_size
    rows = batch_size // grid.shape[0]  # a data shard's rows, held by each of its model devices
    index_map = self._batches.addressable_devices_indices_map((1, batch_size))
    starts = sorted({idx[1].start or 0 for idx in index_map.values()})
    self.local_rows = slice(starts[0], starts[-1] + rows)
    if self.local_rows.stop - self.local_rows.start != rows * len(starts):
      raise ValueError(f"this process's devices do not hold one block of rows: {index_map}")

  def sharding(self, shape) -> NamedSharding:
    """Where a state leaf of this shape lives: split along `model` (see the class), or replicated."""
    n = self.model_shards
    if n == 1 or len(shape) < 2 or math.prod(shape) < self.shard_min_size or shape[-1] % n:
      return self._replicated
    return NamedSharding(self.mesh, P(*([None] * (len(shape) - 1)), MODEL_AXIS))

  def state_shardings(self, tree):
    return jax.tree.map(lambda x: self.sharding(np.shape(x)), tree)

  def compile(self, step_fn: Callable, state=None) -> Callable:
    """step(state, batches, key, table) -> (state, metrics [K]) over K stacked batches; state donated.
    With model.shard > 1 pass the state (host or device values): its leaves' shardings come from it."""
    r = self._replicated
    if self.model_shards > 1 and state is None:
      raise ValueError("model.shard > 1: compile needs the state, to shard its leaves")
    s = r if state is None else self.state_shardings(state)
    return compiled_together(jax.jit(functools.partial(multi_step, step_fn), donate_argnums=0,
                                     in_shardings=(s, self._batches, r, r), out_shardings=(s, r)))

  def put_state(self, tree):
    """On every device, each leaf as `sharding` says (replicated, or split along `model`)."""
    return _fill(tree, self.sharding)

  def put_table(self, tree):
    """The dataset table: replicated on every device."""
    return _fill(tree, lambda shape: self._replicated)

  def put_batches(self, batches):
    """This process's rows [K, local rows, ...] -> global batches [K, B, ...]."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
        self._batches, x, (x.shape[0], self._batch_size, *x.shape[2:])), batches)

  def get_state(self, tree):
    """One host copy (numpy leaves)."""
    return _host(tree)

  get_metrics = get_state


class PmapPlacement:
  """`jax.pmap` over local devices: a copy of the state per device, each batch split in D parts."""

  def __init__(self, devices: tuple, batch_size: int):
    self.devices = tuple(devices)
    # pmap's per-device leading axis, laid out as one array sharded over it.
    self._per_device = NamedSharding(Mesh(np.asarray(self.devices), (AXIS,)), P(AXIS))
    self.local_rows = slice(0, batch_size)

  def compile(self, step_fn: Callable, state=None) -> Callable:
    del state  # a copy of the whole state per device
    return jax.pmap(functools.partial(multi_step, step_fn, axis_name=AXIS), axis_name=AXIS,
                    in_axes=(0, 0, None, 0), donate_argnums=0, devices=self.devices)

  def put_state(self, tree):
    n = len(self.devices)
    return jax.device_put(
        jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n, *np.shape(x))), tree),
        self._per_device)

  put_table = put_state

  def put_batches(self, batches):
    # [K, B, ...] -> [D, K, B/D, ...]: device d gets examples d*B/D .. (d+1)*B/D - 1.
    n = len(self.devices)

    def split(x):
      return np.swapaxes(x.reshape(x.shape[0], n, x.shape[1] // n, *x.shape[2:]), 0, 1)
    return jax.device_put(jax.tree.map(split, batches), self._per_device)

  def get_state(self, tree):
    return _host(jax.tree.map(lambda x: x[0], tree))

  get_metrics = get_state


def placement(mode: str, devices: tuple, batch_size: int, model_shards: int = 1,
              shard_min_size: int = SHARD_MIN_SIZE) -> MeshPlacement | PmapPlacement:
  """The placement for `parallel=mode`: jit (1 device) and mesh share MeshPlacement; model_shards > 1
  (model.shard) splits the large kernels over a second mesh axis, mesh only."""
  if mode not in MODES:
    raise ValueError(f"parallel={mode!r}: expected one of {MODES}")
  if model_shards > 1 and mode != "mesh":
    raise ValueError(f"model.shard={model_shards}: sharded params need parallel='mesh' (parallel={mode!r})")
  if len(devices) % model_shards:
    raise ValueError(f"model.shard={model_shards}: does not divide the {len(devices)} devices")
  check_batch(batch_size, devices[:len(devices) // model_shards], mode)  # split over the data axis
  if mode == "jit" and len(devices) != 1:
    raise ValueError(f"parallel='jit' runs on one device, got num_devices={len(devices)}; "
                     "use parallel='pmap' or 'mesh' for more")
  if mode == "pmap":
    return PmapPlacement(devices, batch_size)
  return MeshPlacement(devices, batch_size, model_shards, shard_min_size)
