r"""GFLOP/s of each convolution of the reference AE, per part, implementation and XLA:CPU setting.

  python -m tools.conv_ops                          # every setting, batch 128 (~10 min, 2 cores)
  python -m tools.conv_ops --batch=32 --settings=default,onednn_custom_call

For every conv of the reference model (two stride-2 convs, two stride-2
transposed convs, the stride-1 output conv) it times the forward pass, the
input gradient and the kernel gradient, each jitted alone, under every conv
implementation of `ae_jax.layers`, and prints GFLOP/s (useful multiply-adds x 2
over the median time) beside a 2048^2 float32 matmul's rate measured in the
same process. XLA reads XLA_FLAGS once, when its backend starts, so each
setting in SETTINGS runs in a child process of its own. One JSON object per
line on stdout, then one markdown table per setting.

Inputs are uniform random: speed does not depend on the values.
"""

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

# XLA_FLAGS for each setting, and the CPUs its process may run on (None: all).
# 'default' is what the entry points set (experiments.use_fast_cpu_settings); every other
# setting changes one thing from it.
_NO_YNN = "--xla_cpu_experimental_ynn_fusion_type="
SETTINGS = {
    "default": (_NO_YNN, None),
    "ynn_on": ("", None),  # jaxlib's own default: YNNPACK fusions on
    "onednn_custom_call": (f"{_NO_YNN} --xla_cpu_use_onednn=true "
                           "--xla_cpu_experimental_onednn_custom_call=true", None),
    "onednn_fusion_dot": (f"{_NO_YNN} --xla_cpu_use_onednn=true "
                          "--xla_cpu_experimental_onednn_fusion_type=dot", None),
    "xnn_fusion_dot": (f"{_NO_YNN} --xla_cpu_experimental_xnn_fusion_type=dot", None),
    "no_xnnpack": (f"{_NO_YNN} --xla_cpu_use_xnnpack=false", None),
    "one_cpu": (_NO_YNN, {0}),  # pinned to CPU 0: one worker thread, no wake-ups across cores
}
PARTS = ("forward", "input_grad", "kernel_grad")

_SETTINGS = flags.DEFINE_list("settings", list(SETTINGS), f"Of {list(SETTINGS)}.")
_BATCH = flags.DEFINE_integer("batch", 128, "Batch size.")
_IMPLS = flags.DEFINE_list("impls", None, "Conv implementations (default: all of ae_jax.layers.IMPLS).")
_MIN_S = flags.DEFINE_float("min_s", 0.3, "Minimum seconds per timed window (3 windows, median).")
_CHILD = flags.DEFINE_string("child", None, "Internal: run one setting in this process.")


def reference_convs(model) -> list[dict]:
  """The model's convs in order: name, transposed?, input H=W, C_in, C_out, stride, MACs per image."""
  (h, _, c), k = model.image_shape, model.encoder.kernel_size
  ops = []
  for i, f in enumerate(model.encoder.filters):
    ops.append(dict(name=f"conv{i}", transpose=False, hw=h, c_in=c, c_out=f, stride=2))
    h, c = -(-h // 2), f
  for i, f in enumerate(reversed(model.encoder.filters)):
    ops.append(dict(name=f"deconv{i}", transpose=True, hw=h, c_in=c, c_out=f, stride=2))
    h, c = 2 * h, f
  ops.append(dict(name="to_pixels", transpose=True, hw=h, c_in=c, c_out=model.image_shape[2], stride=1))
  for op in ops:  # a conv does k*k MACs per output pixel, a transposed conv per input pixel
    pixels = op["hw"] ** 2 if op["transpose"] else (-(-op["hw"] // op["stride"])) ** 2
    op["macs_per_image"] = pixels * k * k * op["c_in"] * op["c_out"]
  return ops


def _part_fns(module, params, x):
  """Jitted forward, input gradient and kernel gradient of one layer, each alone."""
  import jax

  def forward(p, x):
    return module.apply(p, x)

  def input_grad(p, x, dy):
    return jax.vjp(lambda x: module.apply(p, x), x)[1](dy)[0]

  def kernel_grad(p, x, dy):
    def f(kernel):
      return module.apply({"params": {**p["params"], "kernel": kernel}}, x)
    return jax.vjp(f, p["params"]["kernel"])[1](dy)[0]

  return {"forward": jax.jit(forward), "input_grad": jax.jit(input_grad),
          "kernel_grad": jax.jit(kernel_grad)}


def _median_seconds(fn, *args) -> float:
  """Median seconds per call over 3 windows of >= --min_s, after one untimed call."""
  import jax
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(3):
    n, t0 = 0, time.perf_counter()
    while n == 0 or time.perf_counter() - t0 < _MIN_S.value:
      jax.block_until_ready(fn(*args))
      n += 1
    times.append((time.perf_counter() - t0) / n)
  return statistics.median(times)


def run_setting(setting: str) -> None:
  """In this process (XLA_FLAGS and affinity already set by the parent): every op, impl, part."""
  import experiments
  experiments.keep_freed_memory()  # as the entry points do, before JAX allocates
  import jax
  import jax.numpy as jnp

  from ae_jax.models import layers
  import tools
  model, batch = tools.reference_model(), _BATCH.value
  print(json.dumps({"setting": setting, "matmul_gflops": round(tools.matmul_gflops(), 1),
                    "xla_flags": os.environ.get("XLA_FLAGS", ""), "cpus": sorted(os.sched_getaffinity(0)),
                    "batch": batch, "jax": jax.__version__}), flush=True)
  for op in reference_convs(model):
    for impl in _IMPLS.value or layers.IMPLS:
      make = layers.conv_transpose if op["transpose"] else layers.conv
      module = make(impl, op["c_out"], model.encoder.kernel_size, op["stride"], name="op")
      x = jax.random.uniform(jax.random.key(0), (batch, op["hw"], op["hw"], op["c_in"]), jnp.float32)
      params = module.init(jax.random.key(1), x)
      y = jax.eval_shape(module.apply, params, x)
      dy = jax.random.normal(jax.random.key(2), y.shape, y.dtype)
      fns = _part_fns(module, params, x)
      for part in PARTS:
        args = (params, x) if part == "forward" else (params, x, dy)
        s = _median_seconds(fns[part], *args)
        print(json.dumps({"setting": setting, "op": op["name"], "impl": impl, "part": part,
                          "ms": round(s * 1e3, 3),
                          "gflops": round(2 * op["macs_per_image"] * batch / s / 1e9, 1)}), flush=True)


def _child(setting: str) -> list[dict]:
  xla_flags, cpus = SETTINGS[setting]
  env = {**os.environ, "XLA_FLAGS": xla_flags}
  argv = [sys.executable, "-m", "tools.conv_ops", f"--child={setting}", f"--batch={_BATCH.value}",
          f"--min_s={_MIN_S.value}"] + ([f"--impls={','.join(_IMPLS.value)}"] if _IMPLS.value else [])
  proc = subprocess.run(argv, env=env, capture_output=True, text=True,
                        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
  if proc.returncode:
    raise RuntimeError(f"setting {setting!r} failed:\n{proc.stderr[-3000:]}")
  records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
  for r in records:
    print(json.dumps(r), flush=True)
  return records


def table(records: list[dict]) -> str:
  """One markdown table of a setting: a row per (op, part), a GFLOP/s column per impl, best in bold."""
  head, rows = records[0], records[1:]
  impls = list(dict.fromkeys(r["impl"] for r in rows))
  cells = {(r["op"], r["part"], r["impl"]): r["gflops"] for r in rows}
  out = [f"setting `{head['setting']}` (XLA_FLAGS=`{head['xla_flags']}`, CPUs {head['cpus']}), "
         f"batch {head['batch']}, matmul {head['matmul_gflops']} GFLOP/s", "",
         "| op | part | " + " | ".join(impls) + " |", "| --- | --- |" + " --- |" * len(impls)]
  for op in dict.fromkeys(r["op"] for r in rows):
    for part in PARTS:
      vals = [cells.get((op, part, i)) for i in impls]
      best = max(v for v in vals if v is not None)
      out.append(f"| {op} | {part} | " + " | ".join(
          "" if v is None else f"**{v}**" if v == best else str(v) for v in vals) + " |")
  return "\n".join(out)


def main(argv):
  del argv
  from ae_jax.models import layers
  for impl in _IMPLS.value or ():
    if impl not in layers.IMPLS:
      raise app.UsageError(f"--impls: {impl!r}: expected one of {layers.IMPLS}")
  if _CHILD.value:
    run_setting(_CHILD.value)
    return
  for s in _SETTINGS.value:
    if s not in SETTINGS:
      raise app.UsageError(f"--settings: {s!r}: expected one of {list(SETTINGS)}")
  if _BATCH.value <= 0:
    raise app.UsageError(f"--batch={_BATCH.value}: expected a positive integer")
  tables = [table(_child(s)) for s in _SETTINGS.value]
  print("\n\n".join(tables))


if __name__ == "__main__":
  sys.exit(app.run(main))
