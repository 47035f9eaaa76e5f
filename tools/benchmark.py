r"""Training and eval images/s of the reference AE and DAE, with a Keras 3 reference.

  python -m tools.benchmark                      # the whole grid (~20 min on 2 CPU cores)
  python -m tools.benchmark --models=ae --batch_sizes=32,128 --impls=subpixel --keras

One JSON object per line on stdout, one per (model, batch size, conv impl, steps
per call, dtype): compile seconds, then the median and all windows of training
images/s (each window runs whole compiled calls for at least --window_s seconds,
after one untimed window), minor page faults per step, eval images/s, and the
fraction of the FLOP bound (this machine's float32 matmul GFLOP/s, measured
first, over the model's train FLOPs per image). With --keras
(needs `pip install -e '.[bench]'`) the same models train in Keras 3 on
TensorFlow afterwards, in the same process, and a `ratio` line per (model, batch
size) compares JAX's best configuration with Keras.

Inputs are uniform random images: speed does not depend on pixel values. The
DAE corrupts inside the step (Gaussian, as dae_mnist); Keras gets pre-corrupted
inputs, as the reference description does.
"""

import json
import os
import resource
import statistics
import sys
import time

from absl import app, flags
import jax
import numpy as np

from ae_jax import config as config_lib
from ae_jax import models, parallel, train
from ae_jax.models import layers
import experiments
import tools
from tools import keras_epoch

_MODELS = flags.DEFINE_list("models", ["ae", "dae"], "ae and/or dae.")
_BATCHES = flags.DEFINE_list("batch_sizes", ["32", "128", "1024"], "Batch sizes.")
_IMPLS = flags.DEFINE_list("impls", list(layers.IMPLS), f"Conv implementations, of {layers.IMPLS}.")
_KS = flags.DEFINE_list("steps_per_call", ["1", "4"], "Train steps per compiled call (drivers).")
_DTYPES = flags.DEFINE_list("dtypes", ["float32"], f"Compute dtypes, of {models.DTYPES}.")
_WINDOWS = flags.DEFINE_integer("windows", 3, "Timed windows per configuration (median reported).")
_WINDOW_S = flags.DEFINE_float("window_s", 2.0, "Minimum seconds per timed window.")
_KERAS = flags.DEFINE_bool("keras", False, "Also time the Keras 3 / TensorFlow reference.")
_KEEP = flags.DEFINE_bool("keep_freed_memory", True, "experiments.keep_freed_memory() (glibc malloc "
                          "settings; they apply to Keras too); --nokeep_freed_memory to compare.")


def emit(record: dict) -> None:
  print(json.dumps(record), flush=True)


reference_model = tools.reference_model


def train_flops_per_image(model: models.Autoencoder) -> float:
  """Multiply-adds of the forward pass, x2 for FLOPs, x3 for forward + both gradients."""
  (h, w, c), filters = model.image_shape, model.encoder.filters
  macs, k2 = 0, model.encoder.kernel_size**2
  for f in filters:  # stride-2 convs
    h, w = -(-h // 2), -(-w // 2)
    macs += h * w * k2 * c * f
    c = f
  macs += 2 * h * w * c * model.latent_dim  # latent Dense and the decoder's projection
  for f in reversed(filters):  # stride-2 transposed convs: k*k taps per input pixel
    macs += h * w * k2 * c * f
    h, w, c = 2 * h, 2 * w, f
  macs += h * w * k2 * c * model.image_shape[2]  # to pixels
  return 2.0 * macs * 3


def minor_faults() -> int:
  """Page faults served without I/O so far in this process: touching freshly mapped memory."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed_windows(run_once, images_per_call: int) -> tuple[list[float], float]:
  """images/s of --windows windows of >= --window_s seconds each, and minor page faults per call.

  The next call is dispatched before the last one is waited for, so the host
  never stalls the device. The train loop waits only when it logs; a window
  cannot, or it would queue far more calls than it can run. A window ends when
  its last call has finished, so it times finished work only. An untimed window
  first lets the allocator settle.
  """
  rates, calls_timed, faults = [], 0, 0
  for window in range(_WINDOWS.value + 1):
    if window == 1:
      faults = minor_faults()
    calls, t0, last = 0, time.perf_counter(), None
    while time.perf_counter() - t0 < _WINDOW_S.value:
      out = run_once()
      jax.block_until_ready(last)
      last, calls = out, calls + 1
    jax.block_until_ready(last)
    if window:
      rates.append(calls * images_per_call / (time.perf_counter() - t0))
      calls_timed += calls
  return rates, (minor_faults() - faults) / calls_timed


def bench_jax(kind: str, batch: int, impl: str, k: int, dtype: str, peak_gflops: float) -> dict:
  cfg = config_lib.get_default()
  if kind == "dae":
    cfg.noise.kind = "gaussian"
  cfg.model.conv_impl, cfg.model.dtype = impl, dtype
  model = train.build_model(cfg, (28, 28, 1))
  state = train.create_train_state(model, cfg, jax.random.key(0))
  host_params = jax.device_get(state.params)  # the train state's buffers are donated below
  place = parallel.placement("jit", jax.local_devices()[:1], batch)
  steps = train.bind_steps(cfg, model)
  step, eval_fn = place.compile(steps.train), jax.jit(steps.eval)
  x = np.asarray(jax.random.uniform(jax.random.key(1), (k, batch, *model.image_shape)))
  batches = place.put_batches({"image": x})
  key = jax.random.key(2)
  box = {"state": place.put_state(state)}

  def run_once():
    box["state"], m = step(box["state"], batches, key, None)
    return m

  t = time.perf_counter()
  jax.block_until_ready(run_once())
  compile_s = time.perf_counter() - t

  train_rates, faults = timed_windows(run_once, k * batch)
  params = jax.device_put(host_params)
  eval_batch = {"image": x[0], "mask": np.ones(batch, bool), "position": np.arange(batch)}
  jax.block_until_ready(eval_fn(params, eval_batch, key))
  eval_rates, _ = timed_windows(lambda: eval_fn(params, eval_batch, key), batch)
  rate = statistics.median(train_rates)
  bound = peak_gflops * 1e9 / train_flops_per_image(model)
  return {"framework": "jax", "model": kind, "batch_size": batch, "conv_impl": impl,
          "resolved_impl": layers.resolve(impl), "steps_per_call": k, "dtype": dtype,
          "compile_s": round(compile_s, 2), "train_images_per_sec": round(rate, 1),
          "train_windows": [round(r, 1) for r in train_rates], "minor_faults_per_step": round(faults / k),
          "eval_images_per_sec": round(statistics.median(eval_rates), 1),
          "bound_images_per_sec": round(bound), "bound_fraction": round(rate / bound, 4),
          "backend": jax.default_backend(), "device": str(jax.local_devices()[0].device_kind)}


def bench_keras(kind: str, batch: int, peak_gflops: float) -> dict:
  import keras
  import tensorflow as tf
  keras.utils.set_random_seed(0)
  model = keras_epoch.keras_reference()
  rng = np.random.default_rng(0)
  clean = rng.random((batch * 8, 28, 28, 1), np.float32)
  inputs = clean if kind == "ae" else np.clip(clean + rng.normal(0.5, 0.5, clean.shape), 0, 1).astype(
      np.float32)
  t = time.perf_counter()
  model.fit(inputs, clean, batch_size=batch, epochs=1, verbose=0)  # traces and compiles
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  model.fit(inputs, clean, batch_size=batch, epochs=1, verbose=0)
  steps = max(8, int(_WINDOW_S.value / (time.perf_counter() - t) * 8))  # steps per window
  n = steps * batch
  x_in = np.resize(inputs, (n, 28, 28, 1))
  x_out = np.resize(clean, (n, 28, 28, 1))

  class EpochTimes(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
      self.t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
      rates.append(n / (time.perf_counter() - self.t))

  rates, faults = [], minor_faults()
  model.fit(x_in, x_out, batch_size=batch, epochs=_WINDOWS.value, verbose=0, callbacks=[EpochTimes()])
  faults = (minor_faults() - faults) / (steps * _WINDOWS.value)
  model.evaluate(x_in[:batch * 8], x_out[:batch * 8], batch_size=batch, verbose=0)
  eval_rates = []
  for _ in range(_WINDOWS.value):
    t = time.perf_counter()
    model.evaluate(x_in, x_out, batch_size=batch, verbose=0)
    eval_rates.append(n / (time.perf_counter() - t))
  rate = statistics.median(rates)
  bound = peak_gflops * 1e9 / train_flops_per_image(reference_model())
  return {"framework": "keras", "model": kind, "batch_size": batch, "keras": keras.__version__,
          "tensorflow": tf.__version__, "compile_s": round(compile_s, 2),
          "train_images_per_sec": round(rate, 1), "train_windows": [round(r, 1) for r in rates],
          "minor_faults_per_step": round(faults),
          "eval_images_per_sec": round(statistics.median(eval_rates), 1),
          "bound_images_per_sec": round(bound), "bound_fraction": round(rate / bound, 4)}


def check_flags() -> None:
  for name, values, allowed in (("models", _MODELS.value, ("ae", "dae")),
                                ("impls", _IMPLS.value, ("auto", *layers.IMPLS)),
                                ("dtypes", _DTYPES.value, models.DTYPES)):
    for v in values:
      if v not in allowed:
        raise app.UsageError(f"--{name}: {v!r}: expected one of {allowed}")
  for name, values in (("batch_sizes", _BATCHES.value), ("steps_per_call", _KS.value)):
    for v in values:
      if not v.isdigit() or int(v) <= 0:
        raise app.UsageError(f"--{name}: {v!r}: expected positive integers")
  if _KERAS.value:
    try:
      import keras  # noqa: F401
    except ImportError:
      raise app.UsageError("--keras: Keras is not installed; pip install -e '.[bench]'") from None


def main(argv):
  del argv
  kept = experiments.use_fast_cpu_settings(_KEEP.value)  # before JAX's first op, which reads XLA_FLAGS
  check_flags()
  peak = tools.matmul_gflops()
  emit({"matmul_gflops": round(peak, 1), "backend": jax.default_backend(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "keep_freed_memory": kept,
        "device": str(jax.local_devices()[0].device_kind), "jax": jax.__version__,
        "train_mflop_per_image": round(train_flops_per_image(reference_model()) / 1e6, 2)})
  best = {}
  for kind in _MODELS.value:
    for batch in map(int, _BATCHES.value):
      for impl in _IMPLS.value:
        for k in map(int, _KS.value):
          for dtype in _DTYPES.value:
            r = bench_jax(kind, batch, impl, k, dtype, peak)
            emit(r)
            if dtype == "float32" and r["train_images_per_sec"] > best.get((kind, batch), {}).get(
                "train_images_per_sec", 0):
              best[(kind, batch)] = r
  if not _KERAS.value:
    return
  for kind in _MODELS.value:
    for batch in map(int, _BATCHES.value):
      r = bench_keras(kind, batch, peak)
      emit(r)
      j = best[(kind, batch)]
      emit({"ratio": round(j["train_images_per_sec"] / r["train_images_per_sec"], 3), "model": kind,
            "batch_size": batch, "jax_images_per_sec": j["train_images_per_sec"],
            "keras_images_per_sec": r["train_images_per_sec"],
            "jax_config": {k: j[k] for k in ("conv_impl", "steps_per_call", "dtype")}})


if __name__ == "__main__":
  sys.exit(app.run(main))
