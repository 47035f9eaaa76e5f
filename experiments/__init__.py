"""Entry points (`python -m experiments.<name>`)."""

import ctypes
import os
import signal
import sys

_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def keep_freed_memory() -> bool:
  """glibc only: one malloc arena that neither maps nor unmaps memory, so freed buffers are reused.

  XLA:CPU mallocs a step's temporaries afresh on every call (64.6 MiB for the
  reference train step at batch 128). glibc serves a request that large with a
  new mmap and unmaps it on free, so every step page-faults all of it in again:
  18,400 minor faults and ~30 ms of kernel time per batch-128 step. With this,
  one epoch of ae_mnist at batch 128 logs ~1,800 images/s instead of ~1,400,
  with a peak of 1.7 GiB resident instead of 1.1 (tools/BENCHMARKS.md).
  All three settings are needed: a thread's own arena cannot hold more than 64
  MiB and mmaps past it regardless. The cost: memory freed stays with the
  process. Returns False, changing nothing, where libc has no mallopt.
  """
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):  # not glibc (macOS, musl)
    return False
  return all(mallopt(param, value) == 1 for param, value in
             ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1)))


def use_fast_cpu_settings(keep_memory: bool = True) -> bool:
  """Call before JAX's first op: XLA:CPU's YNN fusion off (unless XLA_FLAGS sets it) and keep_freed_memory().

  With YNN fusion on, the reference train step runs at 1,110 images/s at batch
  128 instead of 1,540 (tools/BENCHMARKS.md). Only the entry points'
  __main__ calls this, so importing `experiments` (as the tests do) changes nothing.
  Both settings are process-wide; neither changes any result. Returns whether
  freed memory is kept.
  """
  if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}=".strip()
  return keep_memory and keep_freed_memory()


def cpu_devices_asked() -> int:
  """How many CPU devices JAX will make: JAX_NUM_CPU_DEVICES, else XLA's force-device-count flag, else 1."""
  if os.environ.get("JAX_NUM_CPU_DEVICES", "").strip().lstrip("-").isdigit():
    return max(1, int(os.environ["JAX_NUM_CPU_DEVICES"]))
  for flag in os.environ.get("XLA_FLAGS", "").split():
    if flag.startswith("--xla_force_host_platform_device_count="):
      return max(1, int(flag.split("=", 1)[1]))
  return 1


def size_cpu_pool(devices: int | None = None) -> int | None:
  """Call before JAX's first op: two intra-op threads per CPU device (PJRT_NPROC), unless already set.

  XLA:CPU runs every CPU device's program on one Eigen pool of one thread per
  core, and a collective (pmap's all-reduce) blocks its pool thread until every
  device has arrived. With more devices than threads the last device's convs
  can find no free thread: it never arrives, and XLA aborts the process after
  40 s ("Expected 4 threads to join the rendezvous"). That took 4 devices on 2
  busy cores 2 tries in 2. With a thread per device the last one always gets
  a thread; the second covers the next launch, which async dispatch puts on the
  same pool. Returns the pool size set, or None when it was left alone.
  """
  devices = cpu_devices_asked() if devices is None else devices
  if devices <= 1 or os.environ.get("PJRT_NPROC") or os.environ.get("NPROC"):
    return None
  threads = max(2 * devices, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
  os.environ["PJRT_NPROC"] = str(threads)
  return threads


def _exit_now(signum, frame):
  """Outside the train loop (which checkpoints first), a signal ends the process at once, in one line.

  os._exit rather than an exception: a KeyboardInterrupt raised while JAX
  initialises or compiles has crashed the interpreter (exit 139), and one raised
  during the imports was swallowed by a library (the run went on). Files in the
  workdir are only ever replaced whole, so none is left half-written.
  """
  sys.stderr.write(f"error: stopped by {signal.Signals(signum).name} before or after the training "
                   "loop; nothing half-written, rerun the same command to continue\n")
  sys.stderr.flush()
  os._exit(128 + signum)


def exit_on_signal() -> None:
  """SIGINT/SIGTERM/SIGHUP -> _exit_now (the train loop installs its own checkpointing handler while it
  runs)."""
  for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, _exit_now)


# `python -m experiments.NAME` imports this package first, while sys.argv[0] is still '-m': arm
# the one-line exit before the entry point's heavy imports. Importing the package (tests) arms nothing.
if sys.argv[:1] == ["-m"]:
  exit_on_signal()
