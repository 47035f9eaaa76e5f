r"""Tries the faults a cluster or a careless user brings, as `experiments.train` meets them, and tabulates
what each prints: exit code, last line, tracebacks, what the workdir holds, and whether the rerun equals
an uninterrupted run.

  python -m tools.trust_cases --workdir /tmp/trust --data_dir ~/data/mnist   # ~5 min on 2 cores; root for
                                                                              # the full-disk cases (tmpfs)

The runs are the small reference DAE (dae_mnist.py, the IDX files of --data_dir, 1,024 training
images, batch 64, 3 epochs). Writes WORKDIR/trust_cases.json and prints a markdown table.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

from absl import app, flags
import numpy as np

from ae_jax import data, metrics
from ae_jax.train import compare_runs
from experiments import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A new folder for the runs.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "The four MNIST IDX files.")
_FLIPS = flags.DEFINE_integer("flips", 12, "Single-bit flips to try in the newest checkpoint.")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(workdir, *extra, config="dae_mnist.py"):
  return [
    sys.executable,
    "-m",
    "experiments.train",
    "--config",
    os.path.join(REPO, "experiments", "configs", config),
    "--workdir",
    str(workdir),
    "--config.data.source=idx",
    f"--config.data.dir={_DATA_DIR.value}",
    "--config.data.train_size=1024",
    "--config.batch_size=64",
    "--config.num_epochs=3",
    *extra,
  ]


def run(cmd, **kwargs):
  t = time.perf_counter()
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, **kwargs)
  proc.seconds = time.perf_counter() - t
  return proc


def outcome(proc) -> dict:
  lines = proc.stderr.strip().splitlines()
  return {
    "exit": proc.returncode,
    "last_line": lines[-1][:300] if lines else "",
    "tracebacks": proc.stderr.count("Traceback"),
    "event_loop_closed": proc.stderr.count("Event loop is closed"),
  }


def listing(workdir) -> list[str]:
  return sorted(os.listdir(workdir)) if os.path.isdir(workdir) else ["(no workdir)"]


def same(a, b) -> bool:
  r = compare_runs(str(a), str(b))
  return r["params_bit_identical"] and r["eval_json_identical"] and r["metrics_identical"]


def mount(path, megabytes):
  os.makedirs(path, exist_ok=True)
  subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", path], check=True)


def _double_submit(w, reference: str, out: dict) -> None:
  """1. The same command twice at once."""
  procs = [
    subprocess.Popen(
      command(w("double")), cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    for _ in range(2)
  ]
  errs = [p.communicate()[1] for p in procs]
  records = metrics.read_jsonl(os.path.join(w("double"), "metrics.jsonl"))
  out["1 double submit"] = {
    "exits": [p.returncode for p in procs],
    "refused": [e.strip().splitlines()[-1] for p, e in zip(procs, errs) if p.returncode],
    "tracebacks": sum(e.count("Traceback") for e in errs),
    "metrics_records": len(records),
    "reference_records": len(metrics.read_jsonl(os.path.join(reference, "metrics.jsonl"))),
    "equals_reference": same(reference, w("double")),
  }


def _full_disk(w, reference: str, out: dict) -> None:
  """2. A full disk during a checkpoint save, then during the final eval's writes."""
  disk = w("disk")
  mount(disk, 5)
  try:
    first = run(command(os.path.join(disk, "run")))
    subprocess.run(["mount", "-o", "remount,size=64m", disk], check=True)
    tmp = [f for d, _, fs in os.walk(disk) for f in fs if f.endswith(".tmp")]
    rerun = run(command(os.path.join(disk, "run")))
    out["2a disk full in a save"] = {
      **outcome(first),
      "temp_files_left": tmp,
      "rerun_exit": rerun.returncode,
      "equals_reference": same(reference, os.path.join(disk, "run")),
    }
    proc = subprocess.Popen(
      command(os.path.join(disk, "final"), "--config.eval.final=true"),
      cwd=REPO,
      stderr=subprocess.PIPE,
      stdout=subprocess.DEVNULL,
      text=True,
    )
    last_ckpt = os.path.join(disk, "final", "checkpoints", "48")
    while not os.path.isdir(last_ckpt) and proc.poll() is None:
      time.sleep(0.05)
    time.sleep(0.5)  # the final checkpoint is written; the final eval runs
    with open(os.path.join(disk, "filler"), "wb") as f:
      try:
        f.write(b"\0" * shutil.disk_usage(disk).free)
      except OSError:
        pass  # full
    err = proc.communicate()[1]
    filled = {
      "exit": proc.returncode,
      "last_line": err.strip().splitlines()[-1][:300],
      "tracebacks": err.count("Traceback"),
      "event_loop_closed": err.count("Event loop is closed"),
      "temp_files_left": [f for d, _, fs in os.walk(disk) for f in fs if f.endswith(".tmp")],
    }
    os.remove(os.path.join(disk, "filler"))
    rerun = run(command(os.path.join(disk, "final"), "--config.eval.final=true"))
    filled["rerun_exit"], filled["rerun_says"] = (
      rerun.returncode,
      [ln.split("] ")[-1] for ln in rerun.stderr.splitlines() if "evaluating the checkpoint" in ln],
    )
    out["2b disk full in the final eval"] = filled
  finally:
    subprocess.run(["umount", disk], check=False)


def _flipped_bits(w, reference: str, out: dict) -> None:
  """3. Single-bit flips in the newest checkpoint's files."""
  rng, results = random.Random(0), []
  files = [
    os.path.join(d, f) for d, _, fs in os.walk(os.path.join(reference, "checkpoints", "48")) for f in fs
  ]
  weights = [os.path.getsize(f) for f in files]
  for i in range(_FLIPS.value):
    workdir = w(f"flip{i}")
    shutil.copytree(reference, workdir)
    path = os.path.join(workdir, os.path.relpath(rng.choices(files, weights)[0], reference))
    raw = bytearray(open(path, "rb").read())
    at = rng.randrange(len(raw))
    raw[at] ^= 1 << rng.randrange(8)
    open(path, "wb").write(bytes(raw))
    proc = run(command(workdir))
    results.append(
      {
        "file": os.path.relpath(path, workdir),
        "byte": at,
        "exit": proc.returncode,
        "fell_back": "restored checkpoint at step 45" in proc.stderr,
        "why": [
          ln.split("unreadable (")[-1][:120] for ln in proc.stderr.splitlines() if "is unreadable" in ln
        ],
        "tracebacks": proc.stderr.count("Traceback"),
        "equals_reference": same(reference, workdir),
      }
    )
  out["3 flipped bits"] = {
    "flips": len(results),
    "caught": sum(r["fell_back"] for r in results),
    "all_equal_reference": all(r["equals_reference"] for r in results),
    "each": results,
  }


def _collapse(w, reference: str, out: dict) -> None:
  """4. Collapse, and a non-finite loss before any checkpoint."""
  for name, extra in (
    ("4a collapse adam lr 1e4", ["--config.learning_rate=1e4"]),
    ("4b collapse sgd lr 1e8", ["--config.optimizer=sgd", "--config.learning_rate=1e8"]),
    ("4c collapse as an error", ["--config.learning_rate=1e4", "--config.eval.collapse=error"]),
    (
      "4d nan before a checkpoint",
      ["--config.optimizer=sgd", "--config.learning_rate=1e30", "--config.log_every_steps=1"],
    ),
  ):
    proc = run(command(w(name.split()[0]), *extra))
    ev = os.path.join(w(name.split()[0]), "eval.json")
    out[name] = {
      **outcome(proc),
      "warnings": [ln.split("] ")[-1][:200] for ln in proc.stderr.splitlines() if "no longer depend" in ln][
        :1
      ],
      "eval_collapsed": json.load(open(ev)).get("collapsed") if os.path.exists(ev) else None,
    }


def _bad_arrays(w, reference: str, out: dict) -> None:
  """5. Bad arrays in data.source=npz."""
  tx, ty, vx, vy = data.load_idx(_DATA_DIR.value)
  bad = {
    "5a zero uint8 test images": dict(train_images=tx[:1024], test_images=vx[:0]),
    "5b zero float test images": dict(train_images=tx[:1024], test_images=vx[:0].astype(np.float32)),
    "5c 2048 images, 2000 labels": dict(train_images=tx[:2048], train_labels=ty[:2000], test_images=vx[:100]),
    "5d 1500 images, 2048 labels": dict(train_images=tx[:1500], train_labels=ty[:2048], test_images=vx[:100]),
    "5e NaN pixels": dict(
      train_images=np.where(np.arange(1024)[:, None, None, None] == 700, np.nan, tx[:1024] / 255.0).astype(
        np.float32
      ),
      test_images=vx[:100],
    ),
    "5f 0-255 floats": dict(train_images=tx[:1024].astype(np.float32), test_images=vx[:100]),
  }
  for name, arrays in bad.items():
    path = w(name.split()[0] + ".npz")
    np.savez(path, **arrays)
    workdir = w(name.split()[0])
    proc = run([*command(workdir), "--config.data.source=npz", f"--config.data.dir={path}"])
    out[name] = {**outcome(proc), "workdir": listing(workdir)}


def _dangling_link(w, reference: str, out: dict) -> None:
  """6. A dangling symlink as workdir."""
  os.symlink(w("not_mounted/runs"), w("runs"))
  out["6 dangling link"] = {
    **outcome(run(command(os.path.join(w("runs"), "dae")))),
    "workdir": listing(w("runs")),
  }


def _damaged_side_files(w, reference: str, out: dict) -> None:
  """7. Damaged side files of a stopped run (the reference, stopped at step 45)."""
  for name, damage in (
    ("7a metrics.jsonl cut by 40 bytes", "metrics.jsonl"),
    ("7b half a run.json", "run.json"),
  ):
    workdir = w(name.split()[0])
    shutil.copytree(reference, workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "48"))
    path = os.path.join(workdir, damage)
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[:-40] if damage == "metrics.jsonl" else raw[: len(raw) // 2])
    proc = run(command(workdir))
    entry = {
      **outcome(proc),
      "warnings": [ln.split("] ")[-1] for ln in proc.stderr.splitlines() if "cut short" in ln],
    }
    if proc.returncode == 0:
      entry["equals_reference"] = same(reference, workdir)
    out[name] = entry


def _deleted_eval(w, reference: str, out: dict) -> None:
  """8. A finished run whose eval.json was deleted."""
  shutil.copytree(reference, w("no_eval"))
  os.remove(os.path.join(w("no_eval"), "eval.json"))
  out["8 eval.json deleted"] = {
    **outcome(run(command(w("no_eval")))),
    "equals_reference": same(reference, w("no_eval")),
  }


def _other_data(w, reference: str, out: dict) -> None:
  """9. Epoch 2 resumed on other pixels, same counts and shape."""
  other = w("other_idx")
  shutil.copytree(_DATA_DIR.value, other)
  images = data.read_idx(os.path.join(other, "train-images-idx3-ubyte.gz"), 3)
  data.write_idx(os.path.join(other, "train-images-idx3-ubyte.gz"), images[::-1])
  run([*command(w("other")), "--config.num_epochs=1"])
  proc = run([*command(w("other")), f"--config.data.dir={other}"])
  out["9 other data on resume"] = outcome(proc)


def _signals(w, reference: str, out: dict) -> None:
  """10. SIGHUP, and 11. SIGINT during the final eval."""
  for name, sig, extra, config, wait_for in (
    ("10 SIGHUP mid-run", signal.SIGHUP, [], "dae_mnist.py", "metrics"),
    (
      "11 SIGINT in the final eval",
      signal.SIGINT,
      [
        "--config.eval.final=true",
        "--config.eval.nll_samples=400",
        "--config.num_epochs=1",
        "--config.data.test_size=1000",
      ],
      "vae_mnist.py",
      "step 16/16",
    ),
  ):
    workdir = w(name.split()[0])
    proc = subprocess.Popen(
      command(workdir, *extra, config=config),
      cwd=REPO,
      stderr=subprocess.PIPE,
      stdout=subprocess.DEVNULL,
      text=True,
      env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    err = []
    for line in proc.stderr:
      err.append(line)
      if wait_for in line or (
        wait_for == "metrics"
        and os.path.exists(os.path.join(workdir, "metrics.jsonl"))
        and metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
      ):
        break
    time.sleep(1.0)
    t = time.perf_counter()
    proc.send_signal(sig)
    err.append(proc.communicate()[1])
    took = time.perf_counter() - t
    text = "".join(err)
    rerun = run(command(workdir, *extra, config=config))
    out[name] = {
      "exit": proc.returncode,
      "seconds_to_stop": round(took, 1),
      "last_line": text.strip().splitlines()[-1][:300],
      "tracebacks": text.count("Traceback"),
      "rerun_exit": rerun.returncode,
      "rerun_says": [
        ln.split("] ")[-1]
        for ln in rerun.stderr.splitlines()
        if "evaluating the checkpoint" in ln or "restored" in ln
      ],
    }
    if config == "dae_mnist.py":
      out[name]["equals_reference"] = same(reference, workdir)


CASES = (
  _double_submit,
  _full_disk,
  _flipped_bits,
  _collapse,
  _bad_arrays,
  _dangling_link,
  _damaged_side_files,
  _deleted_eval,
  _other_data,
  _signals,
)


def cases(root: str, reference: str) -> dict:
  """{case: what it printed and left}, each case in a folder of root, compared with `reference`."""
  out = {}
  for case in CASES:
    case(lambda name: os.path.join(root, name), reference, out)
  return out


def main(argv):
  del argv
  cli.quiet_logging()  # the checkpoints compared here would log every Orbax step at INFO
  root = os.path.abspath(os.path.expanduser(_WORKDIR.value))
  if os.path.exists(root):
    raise app.UsageError(f"--workdir={root!r} exists: give a new folder")
  os.makedirs(root)
  reference = os.path.join(root, "reference")
  proc = run(command(reference, "--config.checkpoint_every_steps=15"))
  if proc.returncode:
    raise RuntimeError(proc.stderr[-2000:])
  result = cases(root, reference)
  metrics.write_json(os.path.join(root, "trust_cases.json"), result)
  print("| case | exit | last line | tracebacks | notes |\n| --- | --- | --- | --- | --- |")
  for name, r in result.items():
    notes = {k: v for k, v in r.items() if k not in ("exit", "last_line", "tracebacks", "each")}
    print(
      f"| {name} | {r.get('exit', r.get('exits'))} | {r.get('last_line', '')} | {r.get('tracebacks', '')} "
      f"| {json.dumps(notes)[:400]} |"
    )


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "data_dir"])
  app.run(main)
