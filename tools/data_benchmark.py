r"""Input throughput: the images/s a streamed source delivers, against what the train step consumes.

  python -m tools.data_benchmark --workdir /tmp/databench                  # 10k and 500k pictures
  python -m tools.data_benchmark --workdir /tmp/databench --sizes 2000 --batches 20   # a quick look

For each size N, N generated 64x64x3 pictures (ae_jax.data.shapes) are written
once into WORKDIR as a folder of JPEGs and as ArrayRecord shards (reused by
later invocations). Then, each in a fresh process so that its peak resident
memory is its own: open the source (for the folder, the pass that decodes and
checks every file), then read --batches batches of 64 in the sampler's order (a
random permutation of the split), at each --workers count (the folder's decode
threads; ArrayRecord reads go through grain's ArrayRecordDataSource). Last, per
format, a training run of the reference AE at batch 64 on the first
--train_size pictures (python -m experiments.train, 2 epochs): the images/s and
the data wait its progress lines log. One JSON object per line, then a markdown
table. Writing 500k pictures takes about 10 minutes and 7 GB on 2 cores.
"""

import json
import os
import subprocess
import sys
import time

from absl import app, flags
import numpy as np

from ae_jax import metrics
from tools import whole_process

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64
BATCH = 64
CHUNK = 2000

_WORKDIR = flags.DEFINE_string("workdir", None, "Where the datasets are written (and reused); the runs.")
_SIZES = flags.DEFINE_list("sizes", ["10000", "500000"], "Dataset sizes (training pictures).")
_WORKERS = flags.DEFINE_list("workers", ["1", "2", "4"], "Decode threads to try.")
_BATCHES = flags.DEFINE_integer("batches", 100, "Batches read per measurement.")
_TRAIN_SIZE = flags.DEFINE_integer("train_size", 2048, "Pictures the training runs use (0: no runs).")
_READ = flags.DEFINE_string("read", None, "Internal: FORMAT,DIR,WORKERS: one read measurement, as JSON.")


def write_datasets(root: str, n: int) -> dict:
  """A folder of JPEGs (train/, test/) and ArrayRecord shards of n + n // 10 pictures; written once."""
  from ae_jax import data  # pylint: disable=g-import-not-at-top
  from ae_jax.data import shapes  # pylint: disable=g-import-not-at-top

  folder, shards = os.path.join(root, f"jpeg_{n}"), os.path.join(root, f"records_{n}")
  n_test = max(n // 10, BATCH)
  if not os.path.exists(os.path.join(folder, "done")):
    started = time.perf_counter()
    for split, first, count in (("train", 0, n), ("test", n, n_test)):
      for start in range(first, first + count, CHUNK):
        x, y = shapes.render_many(min(CHUNK, first + count - start), SIZE, seed=1, start=start)
        shapes.write_pictures(os.path.join(folder, split), x, y, start=start, suffix=".jpg")
    open(os.path.join(folder, "done"), "w").close()
    print(json.dumps({"wrote": folder, "seconds": round(time.perf_counter() - started, 1)}), flush=True)
  if not os.path.exists(os.path.join(shards, "ae_jax_records.json")):
    started = time.perf_counter()
    ds = data.load(_data_config("folder", folder, 4))  # the JPEGs, decoded once, in chunks
    data.write_array_record(shards, ds)
    print(json.dumps({"wrote": shards, "seconds": round(time.perf_counter() - started, 1)}), flush=True)
  return {"folder": folder, "array_record": shards}


def _data_config(source: str, directory: str, workers: int):
  from ae_jax import config as config_lib  # pylint: disable=g-import-not-at-top

  c = config_lib.get_default().data
  c.source, c.dir, c.workers = source, directory, workers
  return c


def measure_read(source: str, directory: str, workers: int, batches: int) -> dict:
  """In this process: open the source, then read `batches` batches in a random order."""
  import jax  # pylint: disable=g-import-not-at-top

  from ae_jax import data  # pylint: disable=g-import-not-at-top

  started = time.perf_counter()
  ds = data.load(_data_config(source, directory, workers))
  opened = time.perf_counter() - started
  order = data.epoch_order(jax.random.key(0), 0, len(ds.train))[:batches * BATCH].reshape(batches, BATCH)
  ds.train[order[0]]  # threads and readers started
  started = time.perf_counter()
  for rows in order[1:]:
    ds.train[rows]
  seconds = time.perf_counter() - started
  return {"source": source, "num_train": len(ds.train), "workers": workers, "open_s": round(opened, 1),
          "images_per_s": round((batches - 1) * BATCH / seconds),
          # VmHWM, not getrusage's ru_maxrss: Linux carries that across exec from the parent.
          "peak_rss_mib": whole_process.peak_rss_mib(os.getpid())}


def measure_training(source: str, directory: str, workdir: str, train_size: int) -> dict:
  """A short run of experiments.train on the source: its logged images/s, data wait and peak RSS."""
  cmd = [sys.executable, "-m", "experiments.train", "--config", os.path.join(REPO, "experiments", "configs",
                                                                             "ae_mnist.py"),
         "--workdir", workdir, f"--config.data.source={source}", f"--config.data.dir={directory}",
         f"--config.data.train_size={train_size}", "--config.data.test_size=256", "--config.batch_size=64",
         "--config.num_epochs=2", "--config.log_every_steps=8"]
  with open(workdir + ".log", "w") as log:
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=log)
    peak = 0
    while proc.poll() is None:
      peak = max(peak, whole_process.peak_rss_mib(proc.pid) or 0)
      time.sleep(0.2)
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed: see {workdir}.log")
  records = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  train = [r for r in records if r["kind"] == "train"][1:]  # the first window holds the compile
  rate = float(np.median([r["images_per_sec"] for r in train]))
  return {"source": source, "train_images_per_s": round(rate),
          "data_wait": round(float(np.median([r["data_wait"] for r in train])), 4), "peak_rss_mib": peak}


def main(argv):
  del argv
  if _READ.value:
    source, directory, workers = _READ.value.split(",")
    print(json.dumps(measure_read(source, directory, int(workers), _BATCHES.value)))
    return
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  os.makedirs(_WORKDIR.value, exist_ok=True)
  rows = []
  for n in map(int, _SIZES.value):
    paths = write_datasets(_WORKDIR.value, n)
    for source, directory in paths.items():
      for workers in map(int, _WORKERS.value if source == "folder" else _WORKERS.value[:1]):
        proc = subprocess.run([sys.executable, "-m", "tools.data_benchmark",
                               f"--read={source},{directory},{workers}", f"--batches={_BATCHES.value}"],
                              cwd=REPO, capture_output=True, text=True)
        if proc.returncode:
          raise RuntimeError(proc.stderr[-2000:])
        rows.append({"size": n, **json.loads(proc.stdout.strip().splitlines()[-1])})
        print(json.dumps(rows[-1]), flush=True)
      if _TRAIN_SIZE.value:
        run = os.path.join(_WORKDIR.value, f"run_{source}_{n}_{time.strftime('%H%M%S')}")
        trained = measure_training(source, directory, run, _TRAIN_SIZE.value)
        rows.append({"size": n, "training": True, **trained})
        print(json.dumps(rows[-1]), flush=True)
  print("\n| pictures | source | workers | open s | read img/s | peak RSS MiB |\n" + "| --- " * 6 + "|")
  for r in rows:
    if not r.get("training"):
      print(f"| {r['size']:,} | {r['source']} | {r['workers']} | {r['open_s']} | {r['images_per_s']:,} | "
            f"{r['peak_rss_mib']} |")
  print("\n| pictures | source | train img/s (batch 64) | data wait | peak RSS MiB |\n" + "| --- " * 5 + "|")
  for r in rows:
    if r.get("training"):
      print(f"| {r['size']:,} | {r['source']} | {r['train_images_per_s']} | {100 * r['data_wait']:.1f}% | "
            f"{r['peak_rss_mib']} |")


if __name__ == "__main__":
  app.run(main)
