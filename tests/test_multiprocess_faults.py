"""Multi-process runs that fail or are stopped: a killed or missing peer, a late compile, SIGTERM to one
process. 2 processes x 2 CPU devices on the loopback address (gloo collectives).

Apart from tests/test_multiprocess.py (the runs its tests share) so that the two files run on
different workers under `--dist loadfile`.
"""

import os
import re
import signal
import time

import pytest

from ae_jax import checkpoint
import processes as agreement
from runs import assert_same_run


def test_a_killed_peer_stops_the_other_process(tmp_path):
  started = agreement.start(tmp_path / "w", tmp_path, 2, 2,
                            ["--config.parallel=mesh", "--config.num_epochs=500", "--peer_timeout_s=5"],
                            "kill")
  deadline = time.monotonic() + 120
  while "step 3/" not in open(started[1][1]).read():
    if time.monotonic() > deadline or started[1][0].poll() is not None:
      agreement.wait_or_fail(started, 1)
      pytest.fail("process 1 never reached step 2:\n" + open(started[1][1]).read()[-3000:])
    time.sleep(0.2)
  started[1][0].send_signal(signal.SIGKILL)
  t = time.monotonic()
  rc, out = agreement.wait_or_fail(started[:1], timeout=90)[0]
  assert rc != 0
  assert "another task died" in out
  assert time.monotonic() - t < 60


def test_a_process_that_compiles_its_step_late_does_not_fail_the_other(tmp_path):
  # gloo's collectives wait 30 s for a peer; without the barrier after compiling,
  # process 0 fails its first step ("Gloo context initialization failed").
  started = agreement.start(tmp_path / "w", tmp_path, 2, 2, list(agreement.MESH), "late", late_compile_s=32)
  agreement.check(agreement.wait_or_fail(started))
  assert checkpoint.read_latest(str(tmp_path / "w"))[0] == 4


def test_a_missing_peer_is_a_one_line_error_after_the_timeout(tmp_path):
  started = agreement.start(tmp_path / "w", tmp_path, 2, 2, ["--distributed_timeout_s=3"], "missing")
  started[1][0].kill()  # process 1 never joins
  rc, out = agreement.wait_or_fail(started[:1], timeout=60)[0]
  agreement.wait_or_fail(started[1:], 10)
  assert rc == 5, out[-2000:]
  assert "error: jax.distributed: process 0 of 2 did not see all processes join" in out
  assert not os.path.exists(tmp_path / "w")  # nothing written


def test_sigterm_to_one_process_stops_both_at_one_step_and_the_rerun_is_bit_identical(tmp_path):
  args = ["--config.parallel=mesh", "--config.num_epochs=12"]  # 48 steps of batch 16
  reference = agreement.start(tmp_path / "reference", tmp_path, 2, 2, args, "reference")
  run = agreement.start(tmp_path / "run", tmp_path, 2, 2, args, "run")
  deadline = time.monotonic() + 180
  while "step 3/" not in open(run[1][1]).read():
    if time.monotonic() > deadline or run[1][0].poll() is not None:
      agreement.wait_or_fail(run + reference, 1)
      pytest.fail("process 1 never reached step 3:\n" + open(run[1][1]).read()[-3000:])
    time.sleep(0.1)
  run[1][0].send_signal(signal.SIGTERM)  # process 1 only
  t = time.monotonic()
  results = agreement.wait_or_fail(run, timeout=60)
  seconds = time.monotonic() - t
  assert [rc for rc, _ in results] == [143, 143], [out[-2000:] for _, out in results]
  assert seconds < 30, seconds
  stops = [re.search(r"error: stopped by SIGTERM at step (\d+): checkpoint saved", out) for _, out in results]
  assert all(stops), [out[-2000:] for _, out in results]
  step = int(stops[0].group(1))
  assert int(stops[1].group(1)) == step and 3 <= step < 48
  assert checkpoint.read_latest(str(tmp_path / "run"))[0] == step
  print(f"SIGTERM to process 1: both exited 143 after {seconds:.1f} s, at step {step}")
  agreement.check(agreement.wait_or_fail(reference))
  agreement.check(agreement.wait_or_fail(agreement.start(tmp_path / "run", tmp_path, 2, 2, args, "rerun")))
  assert_same_run(tmp_path / "run", tmp_path / "reference")
