"""Preemption, kill -9, damaged checkpoints and side files, a full disk, a locked workdir, divergence and
collapse: nothing learned is lost, every fault is one line, reruns match."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import zlib

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ae_jax import checkpoint, faults, metrics, train
from ae_jax.train import rundir
from conftest import REPO
from experiments.configs import dae_mnist
import runs


def _run(workdir, *extra, check=True):
  return runs.run(runs.train_command(workdir, extra), check=check)


def _snapshot(path):
  return sorted((os.path.relpath(os.path.join(d, f), path), os.path.getsize(os.path.join(d, f)))
                for d, _, files in os.walk(path) for f in files)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("faults") / "reference"
  t0 = time.perf_counter()
  _run(workdir)
  return workdir, time.perf_counter() - t0


def test_kill_9_at_random_moments_then_rerun_is_bit_identical(reference, tmp_path):
  # The drill tool itself: it kills a run of the same config twice, reruns it, and compares.
  drill = runs.run([sys.executable, "-m", "tools.fault_drill", f"--workdir={tmp_path}", "--kills=2",
                    "--seed=4", f"--max_delay={reference[1]:.1f}", f"--reference={reference[0]}"],
                   check=False)
  assert drill.returncode == 0, drill.stderr[-3000:]
  report = json.loads((tmp_path / "fault_drill.json").read_text())
  assert report["kills"] == 2 and report["ok"], report


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)])
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
  if sig == signal.SIGTERM:  # the same handler for each: one rerun shows what a rerun continues
    rerun = _run(workdir)
    assert f"restored checkpoint at step {step}" in rerun.stderr
    runs.assert_same_run(reference[0], workdir)


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
  runs.assert_same_run(reference[0], workdir)


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
  assert "Traceback" not in proc.stderr
  step, state, _ = checkpoint.read_latest(str(workdir))
  assert step == 1
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["params"]))


def test_checkpoint_save_refuses_non_finite_state(tmp_path):
  mngr = checkpoint.manager(str(tmp_path), 2)
  with pytest.raises(FloatingPointError, match="refusing to save step 3: the state has non-finite"):
    checkpoint.save(mngr, 3, {"w": np.array([1.0, np.nan], np.float32)}, {"step": 3})
  mngr.close()
  assert not os.listdir(tmp_path / "checkpoints")


# --- trust: each case of issue "Trustworthy runs" ------------------------------------------------


def _error_lines(proc):
  return [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]


def _clean_failure(proc, code, starts):
  """Exit `code`, one error line starting with `starts`, no traceback or asyncio noise."""
  assert proc.returncode == code, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr, proc.stderr[-3000:]
  assert len(_error_lines(proc)) == 1 and _error_lines(proc)[0].startswith(starts), proc.stderr[-2000:]
  return _error_lines(proc)[0]


def _resume_from(reference, tmp_path, step, name="w"):
  """A copy of the reference run as if it had stopped at checkpoint `step`."""
  workdir = tmp_path / name
  shutil.copytree(reference[0], workdir)
  for d in os.listdir(workdir / "checkpoints"):
    if d.isdigit() and int(d) > step:
      shutil.rmtree(workdir / "checkpoints" / d)
  return workdir


def test_a_locked_workdir_is_refused_in_one_line_and_left_as_it_was(reference, tmp_path):
  workdir = _resume_from(reference, tmp_path, 45)
  with rundir.Lock(str(workdir)):  # this process holds it, as a first run would
    before = _snapshot(workdir)  # .lock now names this process
    proc = _run(workdir, check=False)
    line = _clean_failure(proc, 2, f"error: workdir='{workdir}' is in use by pid {os.getpid()} on "
                                   f"{socket.gethostname()} since ")
    assert "two runs in one workdir" in line
    assert _snapshot(workdir) == before
  _run(workdir)  # once the holder is gone the run continues (a killed holder releases it too)
  runs.assert_same_run(reference[0], workdir)


def test_two_runs_started_at_once_one_trains_the_other_refuses(reference, tmp_path):
  workdir = tmp_path / "twice"
  procs = [subprocess.Popen(runs.train_command(workdir), cwd=REPO, text=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE) for _ in range(2)]
  errs = [p.communicate(timeout=300)[1] for p in procs]
  codes = sorted(p.returncode for p in procs)
  assert codes in ([0, 0], [0, 2]), errs  # [0, 0]: the second started after the first had finished
  if codes == [0, 2]:
    refused = errs[[p.returncode for p in procs].index(2)]
    assert "is in use by pid" in refused.strip().splitlines()[-1] and "Traceback" not in refused, refused
  runs.assert_same_run(reference[0], workdir)  # metrics.jsonl holds each record once


@pytest.fixture
def tmpfs(tmp_path):
  """A small real filesystem that fills up: a tmpfs, mounted (as root) for the test."""
  mounts = []

  def mount(megabytes: int):
    path = tmp_path / f"tmpfs{len(mounts)}"
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode:
      pytest.skip(f"cannot mount a tmpfs here (mount needs root): {proc.stderr.strip()}")
    mounts.append(path)
    return path

  yield mount
  for path in mounts:
    subprocess.run(["umount", str(path)], check=False)


def test_a_full_disk_is_one_line_exit_6_and_the_rerun_after_freeing_space_matches(reference, tmpfs):
  disk = tmpfs(5)  # room for two checkpoints of the reference DAE (~2.1 MB each) and its side files
  proc = _run(disk / "run", check=False)
  line = _clean_failure(proc, 6, "error: no space left on device for the checkpoint of step ")
  kept = checkpoint.read_latest(str(disk / "run"))[0]
  assert f"(last checkpoint: step {kept})" in line
  assert not [f for d, _, fs in os.walk(disk) for f in fs if f.endswith(".tmp")]
  subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)  # space freed
  _run(disk / "run")
  runs.assert_same_run(reference[0], disk / "run")


def test_a_write_that_runs_out_of_space_inside_orbax_is_one_fault_without_asyncio_noise(tmpfs):
  disk = tmpfs(1)
  code = textwrap.dedent(f"""
      import numpy as np, orbax.checkpoint as ocp
      from ae_jax import checkpoint, faults
      faults.drop_callbacks_to_closed_loops()
      mngr = checkpoint.manager({str(disk)!r}, 3)
      rng = np.random.default_rng(0)  # 3.2 MB that do not compress, past the size check
      state = {{f"a{{i}}": rng.standard_normal(100_000).astype(np.float32) for i in range(8)}}
      try:
        mngr.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
        mngr.wait_until_finished()
      except Exception as e:
        print("fault:", faults.describe(e))""")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert "fault: no space left on device" in proc.stdout, proc.stderr[-2000:]
  assert "Event loop is closed" not in proc.stderr  # 14 such tracebacks without the patch
  # eval.json and the other side files: written whole or not at all, no temp file left.
  (disk / "filler").write_bytes(b"\0" * (shutil.disk_usage(disk).free - 1000))
  with pytest.raises(OSError) as e:
    metrics.write_json(str(disk / "eval.json"), {"x": "y" * 100_000})
  assert faults.describe(e.value) == "no space left on device" and not (disk / "eval.json.tmp").exists()


def test_a_metrics_writer_closed_on_a_full_disk_fails_once_and_exits_quietly(tmpfs):
  disk = tmpfs(1)
  code = textwrap.dedent(f"""
      import os, shutil
      from ae_jax import faults, metrics
      faults.quiet_background_faults()
      writer = metrics.Writer({str(disk)!r})
      writer.write(1, "train", {{"loss": 1.0}})
      with open(os.path.join({str(disk)!r}, "filler"), "wb") as f:
        try:
          f.write(b"\\0" * shutil.disk_usage({str(disk)!r}).free)
        except OSError:
          pass
      for step in range(2, 6):  # buffered by tensorboardX (fewer than its queue holds)
        writer._tb.add_scalar("x", 1.0, step)
      try:
        writer.close()
      except OSError as e:
        print("fault:", faults.describe(e))""")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert "fault: no space left on device" in proc.stdout, proc.stderr[-2000:]
  # Without Writer._abandon_tensorboard, tensorboardX's exit hook flushes again: a second traceback.
  assert "Traceback" not in proc.stderr and "Exception in thread" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("which", [-1, -2])  # the two largest data files: the arrays
def test_a_flipped_bit_in_the_newest_checkpoint_is_found_and_passed_over(reference, tmp_path, which):
  workdir = tmp_path / "flipped"
  shutil.copytree(reference[0], workdir)
  files = sorted((os.path.getsize(os.path.join(d, f)), os.path.join(d, f))
                 for d, _, fs in os.walk(workdir / "checkpoints" / "48") for f in fs)
  path = files[which][1]
  raw = bytearray(open(path, "rb").read())
  raw[len(raw) // 2] ^= 0x04
  open(path, "wb").write(bytes(raw))
  proc = _run(workdir)
  warned = [ln for ln in proc.stderr.splitlines() if "checkpoint at step 48" in ln]
  assert len(warned) == 1 and "unreadable" in warned[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr and "restored checkpoint at step 45" in proc.stderr
  runs.assert_same_run(reference[0], workdir)


def test_the_digests_name_the_array_that_changed(tmp_path):
  mngr = checkpoint.manager(str(tmp_path), 2)
  state = {"a": np.arange(4, dtype=np.float32), "b": np.ones((2, 3), np.float32)}
  checkpoint.save(mngr, 1, state, {"step": 1, "steps_per_epoch": 1, "batch_size": 1, "log_window": {},
                                   "config": {}})
  mngr.wait_until_finished()
  meta = mngr.restore(1, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  assert meta["digests"] == {"['a']": f"crc32:{zlib.crc32(state['a'].tobytes()):08x}",
                             "['b']": f"crc32:{zlib.crc32(state['b'].tobytes()):08x}"}
  changed = {**state, "b": state["b"].copy()}
  changed["b"][1, 2] = np.nextafter(np.float32(1), np.float32(2))  # one ulp
  assert checkpoint.digests(changed)["['b']"] != meta["digests"]["['b']"]
  assert checkpoint.digests(changed)["['a']"] == meta["digests"]["['a']"]
  mngr.close()


def test_a_collapsed_model_is_said_and_stops_the_run_only_when_asked(tmp_path):
  c = dae_mnist.get_config()
  c.data.source, c.data.train_size, c.data.test_size, c.batch_size, c.num_epochs = "embedded", 256, 64, 64, 1
  c.learning_rate = 1e4  # adam: the params explode, the outputs stop depending on the input
  result = train.train_and_evaluate(c, str(tmp_path / "warn"))
  assert np.isfinite(result["loss"]) and result["collapsed"] and result["output_spread"] < 1e-6
  assert result["collapse_reason"].startswith("the reconstructions no longer depend on the input")
  assert json.loads((tmp_path / "warn" / "eval.json").read_text())["collapsed"] is True
  c.eval.collapse = "error"
  with pytest.raises(FloatingPointError,
                     match=r"^the model collapsed at step 4: the reconstructions no longer"):
    train.train_and_evaluate(c, str(tmp_path / "error"))
  c.learning_rate, c.eval.collapse = 1e-3, "error"  # a healthy run of the same size is not collapsed
  healthy = train.train_and_evaluate(c, str(tmp_path / "healthy"))
  assert not healthy["collapsed"] and healthy["output_spread"] > 1e-3


def test_a_non_finite_loss_before_any_checkpoint_says_there_is_none(tmp_path):
  proc = _run(tmp_path / "nan", "--config.optimizer=sgd", "--config.learning_rate=1e30",
              "--config.log_every_steps=1", check=False)
  line = _clean_failure(proc, 3, "error: loss is nan at step 2; stopping")
  assert line.endswith("(last checkpoint: none yet: a rerun starts from scratch)")


def test_a_dangling_link_as_workdir_is_one_line_before_anything_is_read(tmp_path):
  link = tmp_path / "runs"
  os.symlink(tmp_path / "not_mounted" / "runs", link)
  with pytest.raises(ValueError, match=r"^workdir='.*runs/dae': .*runs is a symbolic link to "
                                       r"'.*not_mounted/runs', which does not exist \(a filesystem not "
                                       r"mounted\?\)$"):
    train.train_and_evaluate(dae_mnist.get_config(), str(link / "dae"))
  assert os.listdir(tmp_path) == ["runs"]


def test_a_cut_metrics_jsonl_loses_its_last_line_and_the_rerun_matches(reference, tmp_path):
  workdir = _resume_from(reference, tmp_path, 45)
  path = workdir / "metrics.jsonl"
  path.write_bytes(path.read_bytes()[:-40])
  proc = _run(workdir)
  assert "metrics.jsonl: its last line is cut short" in proc.stderr and "Traceback" not in proc.stderr
  runs.assert_same_run(reference[0], workdir)


def test_a_damaged_run_json_is_one_line_saying_how_to_continue(reference, tmp_path):
  workdir = _resume_from(reference, tmp_path, 45)
  path = workdir / "run.json"
  path.write_text(path.read_text()[: len(path.read_text()) // 2])
  before = _snapshot(workdir)
  line = _clean_failure(_run(workdir, check=False), 2, f"error: {path} is damaged (")
  assert f"mv {path} {path}.damaged" in line and _snapshot(workdir) == before
  os.rename(path, f"{path}.damaged")
  _run(workdir)
  runs.assert_same_run(reference[0], workdir)


def test_a_finished_run_without_eval_json_evaluates_its_final_checkpoint_again(reference, tmp_path):
  workdir = tmp_path / "no_eval"
  shutil.copytree(reference[0], workdir)
  (workdir / "eval.json").unlink()
  proc = _run(workdir)
  assert "evaluating the checkpoint at step 48: eval.json is missing" in proc.stderr
  runs.assert_same_run(reference[0], workdir)  # eval.json as before, metrics.jsonl without a second record


def test_other_data_on_resume_is_refused_unless_allowed(tmp_path, embedded_uint8):
  tx, ty, vx, vy = embedded_uint8
  for name, rows in (("a", slice(0, 256)), ("b", slice(256, 512))):  # same counts and shapes
    np.savez(tmp_path / f"{name}.npz", train_images=tx[rows], train_labels=ty[rows], test_images=vx[:64])
  c = dae_mnist.get_config()
  c.data.source, c.data.dir, c.batch_size, c.num_epochs = "npz", str(tmp_path / "a.npz"), 64, 1
  train.train_and_evaluate(c, str(tmp_path / "w"))
  c.data.dir, c.num_epochs = str(tmp_path / "b.npz"), 2
  with pytest.raises(ValueError, match=r"holds a run with another config or data \(data sha256: \w{12}\.\.\. "
                                       r"-> \w{12}\.\.\.\): use a new workdir, or pass "
                                       r"--allow_config_change"):
    train.train_and_evaluate(c, str(tmp_path / "w"))
  assert train.train_and_evaluate(c, str(tmp_path / "w"), allow_config_change=True)["step"] == 8


def test_a_signal_during_the_final_eval_stops_it_at_once_and_the_rerun_finishes_it(tmp_path):
  workdir = tmp_path / "final"
  final = ("--config.eval.final=true", "--config.eval.nll_samples=400", "--config.eval.nll_examples=32",
           "--config.eval.num_samples=200", "--config.num_epochs=1")
  cmd = runs.train_command(workdir, final, config="vae_mnist.py")
  proc = subprocess.Popen(cmd, cwd=REPO, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
  err = []
  for line in proc.stderr:  # the last step's line: the final eval starts after it
    err.append(line)
    if "step 16/16" in line:
      break
  time.sleep(1.0)
  signalled = time.perf_counter()
  proc.send_signal(signal.SIGINT)
  err.append(proc.communicate(timeout=120)[1])
  assert time.perf_counter() - signalled < 15 and proc.returncode == 130, "".join(err)[-2000:]
  last = "".join(err).strip().splitlines()[-1]
  assert last == (f"error: stopped by SIGINT at step 16: checkpoint saved in {workdir}/checkpoints; rerun "
                  "the same command to continue (it evaluates step 16 from that checkpoint first)")
  assert not (workdir / "eval.json").exists() and checkpoint.read_latest(str(workdir))[0] == 16
  rerun = runs.run(cmd)
  assert "evaluating the checkpoint at step 16: its eval was not recorded" in rerun.stderr
  result = json.loads((workdir / "eval.json").read_text())
  assert result["step"] == 16 and result["nll_samples"] == 400 and np.isfinite(result["frechet_distance"])
  assert [r["step"] for r in metrics.read_jsonl(workdir / "metrics.jsonl") if r["kind"] == "eval"] == [16]
