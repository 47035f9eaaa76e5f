r"""What a user waits for: one MNIST epoch as a whole process, Keras 3 `fit` against `experiments.train`.

  pip install -e '.[bench]'
  python -m tools.whole_process --data_dir=../shared/data/mnist      # batch 128 and 32, 3 pairs each

Runs `python -m tools.keras_epoch` (Keras) and `python -m experiments.train
--config experiments/configs/ae_mnist.py` (ae_jax) alternately, K A K A ..., so
drift on a shared machine reaches both alike. For every run: wall seconds,
seconds from launch to the first step done and from the last step done to exit
(read from each process's output as it arrives), training images/s between the
first and the last step, test MSE and peak resident memory (VmHWM).
Then per batch size the median of the pairs' wall-time ratios Keras / ae_jax
(above 1: ae_jax is faster). ae_jax's runs share one compilation cache folder in
--workdir, so its first run compiles and the later ones read the cache, as a
user's reruns do; `cache` in each record says which. One JSON object per line,
then a markdown table.
"""

import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from absl import app, flags
import numpy as np

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Only when run: tests import this module beside entry points that define the same names."""
  flags.DEFINE_string("data_dir", None, "MNIST IDX folder (data.source='idx').")
  flags.DEFINE_list("batch_sizes", ["128", "32"], "Batch sizes.")
  flags.DEFINE_integer("pairs", 3, "Keras/ae_jax pairs per batch size.")
  flags.DEFINE_string("workdir", None, "Scratch folder (default: a new temporary one).")


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_FIRST = re.compile(r"first step done")
_LAST = re.compile(r"step (\d+)/(\d+)")


def peak_rss_mib(pid: int) -> int | None:
  """The process's peak resident memory since its exec (VmHWM), while it runs; Linux only."""
  try:
    with open(f"/proc/{pid}/status") as f:
      return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmHWM:"))
  except (OSError, StopIteration, ValueError):
    return None


def run_timed(argv: list[str], log_path: str) -> dict:
  """Runs argv to its end; wall seconds, when its first and last ('step N/N') steps were reported,
  N, and peak RSS.

  Peak RSS is polled from /proc every 50 ms (wait4's ru_maxrss would count the
  parent's pages the child shared between fork and exec).
  """
  t0 = time.perf_counter()
  first = last = steps = None
  peak = [0]
  with open(log_path, "w") as log:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, cwd=REPO)

    def poll():
      while proc.poll() is None:
        peak[0] = max(peak[0], peak_rss_mib(proc.pid) or 0)
        time.sleep(0.05)
    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    for line in proc.stdout:
      now = time.perf_counter() - t0
      log.write(line)
      if first is None and _FIRST.search(line):
        first = now
      m = _LAST.search(line)
      if m and m.group(1) == m.group(2):
        last, steps = now, int(m.group(2))
    proc.wait()
    watcher.join()
  wall = time.perf_counter() - t0
  if proc.returncode or first is None or last is None:
    raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}, first step "
                       f"{'seen' if first else 'never reported'}; see {log_path}")
  return {"wall_s": round(wall, 2), "to_first_step_s": round(first, 2),
          "after_last_step_s": round(wall - last, 2), "train_s": last - first, "steps": steps,
          "peak_rss_mib": peak[0]}


def keras_run(npz: str, batch: int, workdir: str) -> dict:
  argv = [sys.executable, "-m", "tools.keras_epoch", f"--data={npz}", f"--batch_size={batch}"]
  log = os.path.join(workdir, f"keras_{batch}_{time.time_ns()}.log")
  r = run_timed(argv, log)
  result = json.loads(open(log).read().strip().splitlines()[-1])
  return {"framework": "keras", **_finish(r, batch), "test_mse": result["test_mse"]}


def ae_jax_run(data_dir: str, batch: int, workdir: str) -> dict:
  run_dir = tempfile.mkdtemp(prefix=f"ae_jax_{batch}_", dir=workdir)
  cache = os.path.join(workdir, "compilation_cache")
  warm = os.path.isdir(cache) and bool(os.listdir(cache))
  argv = [sys.executable, "-m", "experiments.train", "--config", "experiments/configs/ae_mnist.py",
          "--workdir", os.path.join(run_dir, "w"), "--config.data.source=idx",
          f"--config.data.dir={data_dir}", f"--config.batch_size={batch}", f"--compilation_cache_dir={cache}"]
  r = run_timed(argv, os.path.join(run_dir, "log.txt"))
  with open(os.path.join(run_dir, "w", "eval.json")) as f:
    test_mse = json.load(f)["recon_mse"]
  shutil.rmtree(os.path.join(run_dir, "w"))  # checkpoints: ~1 MB each, not needed
  return {"framework": "ae_jax", **_finish(r, batch), "test_mse": test_mse,
          "cache": "warm" if warm else "cold"}


def _finish(r: dict, batch: int) -> dict:
  """Images/s between the end of the first step and the end of the last, as each process counts steps."""
  r["train_images_per_sec"] = round((r.pop("steps") - 1) * batch / r.pop("train_s"), 1)
  return {"batch_size": batch, **r}


def summary(records: list[dict], batch: int) -> dict:
  keras = [r for r in records if r["framework"] == "keras" and r["batch_size"] == batch]
  ours = [r for r in records if r["framework"] == "ae_jax" and r["batch_size"] == batch]

  def med(rs, k):
    return statistics.median(r[k] for r in rs)
  return {"batch_size": batch, "pairs": len(ours),
          "wall_ratio_keras_over_ae_jax": round(statistics.median(
              k["wall_s"] / a["wall_s"] for k, a in zip(keras, ours)), 3),
          **{f"{name}_{k}": med(rs, k) for name, rs in (("keras", keras), ("ae_jax", ours))
             for k in ("wall_s", "to_first_step_s", "after_last_step_s", "train_images_per_sec",
                       "peak_rss_mib", "test_mse")}}


def table(summaries: list[dict]) -> str:
  rows = ["| batch | wall s Keras / ae_jax | ratio (Keras/ae_jax) | to first step s | after last step s "
          "| train images/s | peak RSS MiB | test MSE |", "|" + " --- |" * 8]
  for s in summaries:
    def pair(k, s=s):
      return f"{s['keras_' + k]:g} / {s['ae_jax_' + k]:g}"
    rows.append(f"| {s['batch_size']} | {pair('wall_s')} | **{s['wall_ratio_keras_over_ae_jax']}** | "
                f"{pair('to_first_step_s')} | {pair('after_last_step_s')} | {pair('train_images_per_sec')} | "
                f"{pair('peak_rss_mib')} | {s['keras_test_mse']:.5f} / {s['ae_jax_test_mse']:.5f} |")
  return "\n".join(rows)


def check_flags() -> list[int]:
  if importlib.util.find_spec("keras") is None:
    raise app.UsageError("Keras is not installed; pip install -e '.[bench]'")
  if not FLAGS.data_dir or not os.path.isdir(FLAGS.data_dir):
    raise app.UsageError(f"--data_dir={FLAGS.data_dir!r}: expected a folder of MNIST IDX files")
  if FLAGS.pairs <= 0:
    raise app.UsageError(f"--pairs={FLAGS.pairs}: expected a positive integer")
  for b in FLAGS.batch_sizes:
    if not b.isdigit() or int(b) <= 0:
      raise app.UsageError(f"--batch_sizes: {b!r}: expected positive integers")
  return [int(b) for b in FLAGS.batch_sizes]


def main(argv):
  del argv
  batches = check_flags()
  from ae_jax import data  # after the checks: it imports JAX
  train_x, _, test_x, _ = data.load_idx(FLAGS.data_dir)
  workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="whole_process_")
  os.makedirs(workdir, exist_ok=True)
  npz = os.path.join(workdir, "mnist.npz")
  np.savez(npz, x_train=train_x.reshape(-1, 28, 28), x_test=test_x.reshape(-1, 28, 28))
  print(json.dumps({"workdir": workdir, "python": sys.version.split()[0], "cpus": os.cpu_count()}),
        flush=True)
  records = []
  for batch in batches:
    for _ in range(FLAGS.pairs):
      for run in (keras_run(npz, batch, workdir), ae_jax_run(FLAGS.data_dir, batch, workdir)):
        records.append(run)
        print(json.dumps(run), flush=True)
  summaries = [summary(records, b) for b in batches]
  for s in summaries:
    print(json.dumps(s), flush=True)
  print(table(summaries))


if __name__ == "__main__":
  define_flags()
  sys.exit(app.run(main))
