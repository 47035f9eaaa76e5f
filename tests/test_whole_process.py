"""tools.whole_process's timing of a child process, and its summary of the pairs."""

import sys

import pytest

from tools import whole_process

# A stand-in for a training process: 0.5 s before its first step, 0.5 s of steps, 0.3 s after the
# last; 300 MB touched (peak RSS), freed before it exits.
_CHILD = """
import time
time.sleep(0.5)
print("first step done", flush=True)
block = bytearray(300 * 2**20)
time.sleep(0.5)
print("step 4/4", flush=True)
del block
time.sleep(0.3)
"""


def test_run_timed_reads_first_and_last_step_and_peak_memory(tmp_path):
  r = whole_process.run_timed([sys.executable, "-c", _CHILD], str(tmp_path / "log"))
  # Each part at least its sleep; no upper bounds, since a loaded machine may stall the child
  # (a 300 MB allocation once took 3.8 s in CI). The parts must add up to the wall time.
  assert r["to_first_step_s"] >= 0.5 and r["train_s"] >= 0.5 and r["after_last_step_s"] >= 0.3
  parts = r["to_first_step_s"] + r["train_s"] + r["after_last_step_s"]
  assert abs(parts - r["wall_s"]) < 0.05 and r["steps"] == 4
  assert 300 <= r["peak_rss_mib"] < 600
  assert "step 4/4" in (tmp_path / "log").read_text()


def test_a_child_that_never_reports_its_first_step_is_an_error(tmp_path):
  with pytest.raises(RuntimeError, match="first step never reported"):
    whole_process.run_timed([sys.executable, "-c", "print('step 1/1')"], str(tmp_path / "log"))


def test_summary_is_the_median_of_the_pairs():
  def run(framework, wall, mse):
    return {"framework": framework, "batch_size": 32, "wall_s": wall, "to_first_step_s": 1.0,
            "after_last_step_s": 0.5, "train_images_per_sec": 60000 / wall, "peak_rss_mib": 1000,
            "test_mse": mse}
  records = [run("keras", 30, 0.01), run("ae_jax", 20, 0.011), run("keras", 60, 0.01),
             run("ae_jax", 20, 0.011), run("keras", 33, 0.01), run("ae_jax", 30, 0.011)]
  s = whole_process.summary(records, 32)
  assert s["wall_ratio_keras_over_ae_jax"] == 1.5  # pairs 1.5, 3.0, 1.1
  assert s["keras_wall_s"] == 33 and s["ae_jax_wall_s"] == 20 and s["pairs"] == 3
  assert "| 32 | 33 / 20 | **1.5** |" in whole_process.table([s])
