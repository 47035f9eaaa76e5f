"""Launches real multi-process runs of experiments.train on 127.0.0.1 (gloo collectives) for the tests.

Every launched process writes to a file (no pipe can fill and stall it) and is
killed if it outlives its deadline. `pytest tests/test_multiprocess.py -s`
prints how far the layouts are apart.
"""

import os
import shutil
import socket
import subprocess
import sys
import time

import orbax.checkpoint as ocp
import pytest

from ae_jax import metrics

distance = metrics.relative_distance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository
# The reference DAE (quickstart = dae_mnist on the embedded digits), 4 steps of batch 16 per epoch.
ARGS = ("--config", "experiments/configs/quickstart.py", "--config.data.train_size=64",
        "--config.data.test_size=64", "--config.batch_size=16", "--config.num_epochs=1",
        "--config.checkpoint_every_steps=2", "--config.log_every_steps=1", "--config.keep_checkpoints=4",
        "--config.eval_batch_size=64", "--config.num_images=4")
MESH = ("--config.parallel=mesh",)

class Hung(RuntimeError):
  """A launched process outlived its deadline (it and its peers were killed)."""


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# experiments.train, with the last process's train step compiled `seconds` late (a busy host).
LATE_COMPILE = """
import functools, runpy, sys, time
import jax
from ae_jax import parallel
jit, seconds = jax.jit, float(sys.argv.pop(1))

def late_jit(fun, *args, **kwargs):
  if isinstance(fun, functools.partial) and fun.func is parallel.multi_step:
    time.sleep(seconds)
  return jit(fun, *args, **kwargs)

jax.jit = late_jit
runpy.run_module("experiments.train", run_name="__main__")
"""


def start(workdir, log_dir, processes: int, devices: int, extra=(), tag="run", late_compile_s=0.0):
  """Starts `processes` copies of experiments.train; returns [(Popen, log path)]."""
  port = free_port()
  env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(devices), "JAX_PLATFORMS": "cpu"}
  started = []
  for i in range(processes):
    dist = [] if processes == 1 else [f"--num_processes={processes}", f"--process_id={i}",
                                      f"--coordinator_address=127.0.0.1:{port}"]
    log = os.path.join(log_dir, f"{tag}.{i}.log")
    late = i == processes - 1 and late_compile_s
    command = ["-c", LATE_COMPILE, str(late_compile_s)] if late else ["-m", "experiments.train"]
    with open(log, "w") as f:  # a file, not a pipe: a full pipe would stall the process
      p = subprocess.Popen([sys.executable, *command, *ARGS, f"--workdir={workdir}", *extra, *dist],
                           cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    started.append((p, log))
  return started


def wait(started, timeout: float = 240) -> list[tuple[int, str]]:
  """(returncode, output) of each process; all are killed (Hung) if any outlives the deadline."""
  deadline = time.monotonic() + timeout
  try:
    for p, _ in started:
      p.wait(timeout=max(0.1, deadline - time.monotonic()))
  except subprocess.TimeoutExpired:
    for p, _ in started:
      p.kill()
    for p, _ in started:
      p.wait()
    logs = "\n".join(open(log).read()[-2000:] for _, log in started)
    raise Hung(f"a process hung past {timeout} s and was killed:\n{logs}") from None
  return [(p.returncode, open(log).read()) for p, log in started]


def wait_or_fail(started, timeout: float = 240) -> list[tuple[int, str]]:
  """wait(), failing the calling test (not erroring it) when a process hangs."""
  try:
    return wait(started, timeout)
  except Hung as e:
    pytest.fail(str(e))


def check(results) -> None:
  for rc, out in results:
    if rc != 0:
      raise RuntimeError(f"a process exited with {rc}:\n{out[-3000:]}")


def run_all(d: str) -> dict:
  """1 epoch as 2x2, 1x1 and 1x4; 2x2 -> 1x4 and 1x4 -> 2x2 for a 2nd epoch; a straight 2 epochs."""
  runs = {name: os.path.join(d, name) for name in ("2x2", "1x1", "1x4", "2to1", "1to2", "straight")}
  more = (*MESH, "--config.num_epochs=2")
  # Independent runs start together: each process spends seconds importing on one core.
  first = [start(runs["2x2"], d, 2, 2, MESH, "2x2"), start(runs["1x1"], d, 1, 1, (), "1x1"),
           start(runs["1x4"], d, 1, 4, MESH, "1x4"), start(runs["straight"], d, 1, 4, more, "straight")]
  check([r for started in first for r in wait(started)])
  shutil.copytree(runs["2x2"], runs["2to1"])
  shutil.copytree(runs["1x4"], runs["1to2"])
  second = [start(runs["2to1"], d, 1, 4, more, "2to1"), start(runs["1to2"], d, 2, 2, more, "1to2")]
  check([r for started in second for r in wait(started)])
  return runs


def params(workdir, step):
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  try:
    return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state["params"]
  finally:
    mngr.close()
