r"""Kills a small training run at random moments, reruns it, and checks it ends bit-identical.

  python -m tools.fault_drill --workdir runs/drill --kills 10

1. trains the drill config uninterrupted in WORKDIR/reference;
2. trains it again in WORKDIR/drill, sending SIGKILL (or --signal) after a random
   delay, then rerunning the same command, until --kills kills have landed;
3. lets the last rerun finish and compares params, eval.json and metrics.jsonl
   with the reference, bit for bit. Writes WORKDIR/fault_drill.json; exit 1 on
   any difference.
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

from ae_jax import metrics
from ae_jax.train import compare_runs
from experiments import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Where the reference and drill runs go.")
_KILLS = flags.DEFINE_integer("kills", 10, "Kills to land before letting the run finish.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for the kill delays.")
_SIGNAL = flags.DEFINE_enum("signal", "KILL", ["KILL", "TERM", "INT", "mixed"],
                            "Signal to send; 'mixed' picks KILL, TERM or INT at random.")
_MAX_DELAY = flags.DEFINE_float("max_delay", None,
                                "Longest delay before a kill, in s (default: the reference's time).")
_REFERENCE = flags.DEFINE_string(
    "reference", None, "A finished uninterrupted run of the drill's config to compare with (default: made "
    "in WORKDIR/reference first); needs --max_delay.")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Small enough for a drill of many kills; checkpoints every 3 steps and at each epoch.
DRILL_OVERRIDES = ("--config.data.source=embedded", "--config.data.train_size=512",
                   "--config.data.test_size=128", "--config.num_epochs=3",
                   "--config.batch_size=32", "--config.checkpoint_every_steps=3",
                   "--config.log_every_steps=4", "--config.eval_batch_size=128",
                   "--config.num_images=4")


def train_command(workdir: str, extra=()) -> list[str]:
  return [sys.executable, "-m", "experiments.train",
          "--config", os.path.join(REPO, "experiments", "configs", "dae_mnist.py"),
          "--workdir", workdir, *DRILL_OVERRIDES, *extra]


def _start(cmd):
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)


def run_drill(workdir: str, kills: int, seed: int = 0, sig: str = "KILL",
              max_delay: float | None = None, reference: str | None = None, log=print) -> dict:
  """The drill; returns its report (also written to WORKDIR/fault_drill.json).

  reference: a finished uninterrupted run of train_command() to compare with
  (default: made in WORKDIR/reference first).
  """
  rng = random.Random(seed)
  drill_dir = os.path.join(workdir, "drill")
  shutil.rmtree(drill_dir, ignore_errors=True)
  ref_time = None
  if reference is None:
    reference = os.path.join(workdir, "reference")
    shutil.rmtree(reference, ignore_errors=True)
    t0 = time.perf_counter()
    proc = _start(train_command(reference))
    _, err = proc.communicate(timeout=900)
    if proc.returncode != 0:
      raise RuntimeError(f"reference run failed ({proc.returncode}): {err[-2000:]}")
    ref_time = time.perf_counter() - t0
  ref_dir = reference
  if max_delay is None:
    if ref_time is None:
      raise ValueError("max_delay is needed with a given reference")
    max_delay = ref_time
  log(f"reference run: {ref_time or 0:.1f} s; kill delays uniform in [0.5, {max_delay:.1f}] s")

  attempts, landed, checks = [], 0, []
  while True:
    proc = _start(train_command(drill_dir))
    if landed < kills:
      delay = rng.uniform(0.5, max_delay)
      signame = rng.choice(["KILL", "TERM", "INT"]) if sig == "mixed" else sig
      try:
        proc.wait(timeout=delay)
      except subprocess.TimeoutExpired:
        proc.send_signal(getattr(signal, f"SIG{signame}"))
        landed += 1
      _, err = proc.communicate(timeout=900)
      ckpts = os.path.join(drill_dir, "checkpoints")
      steps = sorted(int(d) for d in os.listdir(ckpts) if d.isdigit()) if os.path.isdir(ckpts) else []
      last_line = (err.strip().splitlines() or [""])[-1]
      attempt = {"attempt": len(attempts) + 1, "delay_s": round(delay, 2), "signal": signame,
                 "returncode": proc.returncode, "latest_checkpoint": steps[-1] if steps else None,
                 "message": last_line if last_line.startswith("error:") else ""}
      attempts.append(attempt)
      log(f"attempt {attempt['attempt']:2d}: {signame:4s} after {delay:5.2f} s -> exit "
          f"{proc.returncode:4d}, latest checkpoint {attempt['latest_checkpoint']} "
          f"{attempt['message']}")
      if proc.returncode == 0:
        if landed >= kills:
          break
        # Finished before the kill landed: check this sequence, then start over for the rest.
        checks.append(compare_runs(ref_dir, drill_dir))
        log(f"  finished before the kill: {checks[-1]}; starting the drill run afresh")
        shutil.rmtree(drill_dir)
      continue
    _, err = proc.communicate(timeout=900)
    if proc.returncode != 0:
      raise RuntimeError(f"final rerun failed ({proc.returncode}): {err[-2000:]}")
    break
  checks.append(compare_runs(ref_dir, drill_dir))
  configs = [json.load(open(os.path.join(d, "run.json")))["config"] for d in (ref_dir, drill_dir)]
  if configs[0] != configs[1]:
    raise ValueError(f"--reference={ref_dir!r} ran another config than the drill: compare nothing")
  keys = ("params_bit_identical", "eval_json_identical", "metrics_identical")
  report = {"kills": landed, "attempts": attempts, "reference_time_s": ref_time,
            "finished_sequences": checks, **{k: all(c[k] for c in checks) for k in keys}}
  report["ok"] = all(report[k] for k in keys)
  metrics.write_json(os.path.join(workdir, "fault_drill.json"), report)
  log(f"{landed} kills; params bit-identical: {report['params_bit_identical']}, eval.json "
      f"identical: {report['eval_json_identical']}, metrics.jsonl identical: "
      f"{report['metrics_identical']}")
  return report


def main(argv):
  cli.quiet_logging()  # the checkpoints read here would log every Orbax step at INFO
  del argv
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  report = run_drill(_WORKDIR.value, _KILLS.value, _SEED.value, _SIGNAL.value, _MAX_DELAY.value,
                     _REFERENCE.value)
  sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
  app.run(main)
