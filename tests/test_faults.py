"""Preemption, kill -9, damaged checkpoints, divergence: nothing learned is lost, reruns match."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from ae_jax import checkpoint, metrics, train
from conftest import REPO
import runs


def _run(workdir, *extra, check=True):
  return runs.run(runs.train_command(workdir, extra), check=check)


def _same(a, b):
  result = train.compare_runs(str(a), str(b))
  assert result["params_bit_identical"] and result["eval_json_identical"] and \
      result["metrics_identical"], result


def _snapshot(path):
  return sorted((os.path.relpath(os.path.join(d, f), path), os.path.getsize(os.path.join(d, f)))
                for d, _, files in os.walk(path) for f in files)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("faults") / "reference"
  t0 = time.perf_counter()
  _run(workdir)
  return workdir, time.perf_counter() - t0


def test_same_config_and_seed_twice_is_bit_identical(reference, tmp_path):
  _run(tmp_path / "again")
  _same(reference[0], tmp_path / "again")


def test_kill_9_at_random_moments_then_rerun_is_bit_identical(reference, tmp_path):
  # The drill tool itself: it kills a run of the same config twice, reruns it, and compares.
  drill = runs.run([sys.executable, "-m", "tools.fault_drill", f"--workdir={tmp_path}", "--kills=2",
                    "--seed=4", f"--max_delay={reference[1]:.1f}", f"--reference={reference[0]}"],
                   check=False)
  report = json.loads((tmp_path / "fault_drill.json").read_text())
  assert drill.returncode == 0 and report["kills"] == 2 and report["ok"], (drill.stderr[-2000:], report)


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_checkpoints_current_step_and_rerun_continues(reference, tmp_path, sig, code):
  workdir = tmp_path / "preempted"
  proc = subprocess.Popen(runs.train_command(workdir), cwd=REPO, text=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
  jsonl = workdir / "metrics.jsonl"
  deadline = time.time() + 300
  while not (jsonl.exists() and metrics.read_jsonl(jsonl)) and time.time() < deadline:
    time.sleep(0.2)  # wait until training is under way
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == code, err[-2000:]
  last = err.strip().splitlines()[-1]
  assert last.startswith(f"error: stopped by {signal.Signals(sig).name} at step ")
  assert last.endswith("rerun the same command to continue")
  step = int(last.split(" at step ")[1].split(":")[0])
  assert 0 < step < 48 and checkpoint.read_latest(str(workdir))[0] == step
  rerun = _run(workdir)
  assert f"restored checkpoint at step {step}" in rerun.stderr
  _same(reference[0], workdir)


def _damage(ckpt_dir):
  """Overwrites every data file of one checkpoint with garbage of the same size."""
  for d, _, files in os.walk(ckpt_dir):
    for f in files:
      path = os.path.join(d, f)
      with open(path, "r+b") as fh:
        fh.write(b"\x00garbage" * (os.path.getsize(path) // 8 + 1))


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(reference, tmp_path):
  workdir = tmp_path / "corrupt"
  shutil.copytree(reference[0], workdir)
  ckpts = workdir / "checkpoints"
  steps = sorted(int(d) for d in os.listdir(ckpts) if d.isdigit())
  assert steps == [42, 45, 48]
  _damage(ckpts / "48")
  proc = _run(workdir)
  assert "checkpoint at step 48" in proc.stderr and "unreadable" in proc.stderr
  assert "restored checkpoint at step 45" in proc.stderr
  assert os.listdir(workdir / "checkpoints_unreadable") == ["48"]  # kept, out of the way
  _same(reference[0], workdir)


def test_no_readable_checkpoint_is_one_line_and_changes_nothing(reference, tmp_path):
  workdir = tmp_path / "all_bad"
  shutil.copytree(reference[0], workdir)
  for d in os.listdir(workdir / "checkpoints"):
    if d.isdigit():
      _damage(workdir / "checkpoints" / d)
  before = _snapshot(workdir)
  proc = _run(workdir, check=False)
  assert proc.returncode == 4
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: no readable checkpoint in ") and "step 48:" in last
  assert "Traceback" not in proc.stderr
  assert _snapshot(workdir) == before


def test_interrupted_save_leftover_is_ignored(reference, tmp_path):
  workdir = tmp_path / "leftover"
  shutil.copytree(reference[0], workdir)
  partial = workdir / "checkpoints" / "51.orbax-checkpoint-tmp"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "half_written").write_bytes(b"\x01" * 100)
  proc = _run(workdir, "--config.num_epochs=3")
  assert "nothing to do" in proc.stderr
  assert checkpoint.read_latest(str(workdir))[0] == 48
  assert not partial.exists()  # cleaned when the manager opened


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path):
  workdir = tmp_path / "nan"
  proc = _run(workdir, "--config.optimizer=sgd", "--config.learning_rate=1e30",
              "--config.checkpoint_every_steps=1", "--config.log_every_steps=1", check=False)
  assert proc.returncode == 3
  last = proc.stderr.strip().splitlines()[-1]
  assert last == "error: loss is nan at step 2; stopping (last checkpoint: step 1)", last
  step, state, _ = checkpoint.read_latest(str(workdir))
  assert step == 1
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["params"]))


def test_checkpoint_save_refuses_non_finite_state(tmp_path):
  mngr = checkpoint.manager(str(tmp_path), 2)
  with pytest.raises(FloatingPointError, match="refusing to save step 3: the state has non-finite"):
    checkpoint.save(mngr, 3, {"w": np.array([1.0, np.nan], np.float32)}, {"step": 3})
  mngr.close()
  assert not os.listdir(tmp_path / "checkpoints")
