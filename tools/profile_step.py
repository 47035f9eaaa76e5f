r"""Where a reference train step spends its time: the XLA ops of one compiled step, slowest first.

  python -m tools.profile_step --conv_impl=subpixel --batch=128

Traces --steps steps with jax.profiler, then sums each op's time per step and
prints it with the op's shape and the source line it came from.
"""

import collections
import functools
import glob
import gzip
import json
import re
import resource
import sys
import tempfile
import time

from absl import app, flags
import jax
import numpy as np

from ae_jax import config as config_lib
from ae_jax import parallel, train
from ae_jax.models import layers
import experiments

_IMPL = flags.DEFINE_enum("conv_impl", "auto", ["auto", *layers.IMPLS], "Conv implementation.")
_BATCH = flags.DEFINE_integer("batch", 128, "Batch size.")
_STEPS = flags.DEFINE_integer("steps", 10, "Traced steps.")
_TOP = flags.DEFINE_integer("top", 20, "Ops printed.")
_KEEP = flags.DEFINE_bool("keep_freed_memory", True, "experiments.keep_freed_memory(); "
                          "--nokeep_freed_memory to see malloc's own behaviour.")


def _union_us(intervals) -> float:
  """Total length of the union of (start, end, ...) intervals."""
  total, end = 0.0, float("-inf")
  for a, b, *_ in sorted(intervals):
    total += max(0.0, b - max(a, end))
    end = max(end, b)
  return total


def main(argv):
  del argv
  kept = experiments.use_fast_cpu_settings(_KEEP.value)  # before JAX's first op
  cfg = config_lib.get_default()
  cfg.model.conv_impl = _IMPL.value
  model = train.build_model(cfg, (28, 28, 1))
  state = train.create_train_state(model, cfg, jax.random.key(0))
  step = jax.jit(functools.partial(parallel.multi_step, train.bind_steps(cfg, model).train), donate_argnums=0)
  batch = {"image": jax.device_put(np.random.default_rng(0).random((1, _BATCH.value, 28, 28, 1), np.float32))}
  key = jax.random.key(1)
  hlo = step.lower(state, batch, key).compile().as_text()
  hlo_ops = set(re.findall(r"%([\w.-]+) = ", hlo))
  box = {"state": state}

  def run(n):  # the next step is dispatched before the last is waited for, as benchmark.timed_windows
    last = None
    for _ in range(n):
      box["state"], m = step(box["state"], batch, key)
      jax.block_until_ready(last)
      last = m
    jax.block_until_ready(last)

  run(_STEPS.value)  # untimed: the allocator settles
  t, faults = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  run(_STEPS.value)
  wall_ms = (time.perf_counter() - t) * 1e3 / _STEPS.value  # untraced
  faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / _STEPS.value
  rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the profiler's own
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d, create_perfetto_trace=True):
      run(_STEPS.value)
    events = json.load(gzip.open(glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)[0]))["traceEvents"]
  per_op = collections.Counter()
  ops, pool = [], []  # (start, end, name) of XLA ops; thread-pool regions of the runtime
  for e in events:
    if e.get("ph") != "X":
      continue
    if e["name"] in hlo_ops:  # XLA ops only, not runtime bookkeeping
      per_op[e["name"]] += e["dur"] / 1e3 / _STEPS.value
      ops.append((e["ts"], e["ts"] + e["dur"], e["name"]))
    elif e["name"].startswith("ThreadpoolListener::StartRegion"):
      pool.append((e["ts"], e["ts"] + e["dur"], e["name"]))
  total = sum(per_op.values())
  per_step = 1e3 * _STEPS.value
  span = (max(b for _, b, _ in ops) - min(a for a, _, _ in ops)) / per_step
  busy = _union_us(ops) / per_step  # some op runs; the rest of the span is gaps between ops
  pool_only = (_union_us(ops + pool) - _union_us(ops)) / per_step
  print(f"conv_impl={layers.resolve(_IMPL.value)} batch={_BATCH.value} keep_freed_memory={kept}: "
        f"untraced step {wall_ms:.1f} ms, {faults:.0f} minor page faults per step; "
        f"traced span {span:.1f} ms per step, of which some XLA op runs {busy:.1f} ms and none "
        f"{span - busy:.1f} ms ({pool_only:.1f} ms of it inside thread-pool regions); ops sum to "
        f"{total:.1f} ms ({_BATCH.value / total * 1e3:.0f} images/s if nothing else ran); "
        f"{len(ops) / _STEPS.value:.0f} ops per step; peak resident memory before tracing "
        f"{rss_mib:.0f} MiB")
  # Which op each gap follows: a gap is time after that op ends and before the next starts.
  gap_after, end, last = collections.Counter(), None, None
  for a, b, name in sorted(ops):
    if end is not None and a > end:
      gap_after[last] += (a - end) / per_step
    if end is None or b >= end:
      end, last = b, name
  print("gaps after: " + ", ".join(f"{n} {ms:.1f} ms" for n, ms in gap_after.most_common(5)))
  for name, ms in per_op.most_common(_TOP.value):
    line = next((ln for ln in hlo.splitlines() if re.search(rf"%{re.escape(name)} = ", ln)), "")
    shape = line.split(" = ")[1].split(" ")[0] if line else "?"
    op = re.search(r'op_name="([^"]+)"', line)
    print(f"{ms:8.2f} ms {100 * ms / total:5.1f}%  {name:34s} {shape:28s} {op.group(1)[-70:] if op else ''}")


if __name__ == "__main__":
  experiments.use_fast_cpu_settings()
  sys.exit(app.run(main))
