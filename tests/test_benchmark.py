"""tools.benchmark's JSON lines, and what experiments.keep_freed_memory() changes."""

import json
import statistics
import subprocess
import sys

import pytest

from conftest import REPO


def test_one_json_line_per_configuration():
  cmd = [sys.executable, "-m", "tools.benchmark", "--models=ae,dae", "--batch_sizes=16",
         "--impls=subpixel", "--steps_per_call=1", "--windows=2", "--window_s=0.2"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  header, *records = [json.loads(line) for line in proc.stdout.splitlines()]
  assert header["keep_freed_memory"] is True
  assert "--xla_cpu_experimental_ynn_fusion_type=" in header["xla_flags"]
  assert header["matmul_gflops"] > 0 and header["train_mflop_per_image"] == pytest.approx(40.23, abs=0.01)
  assert [(r["model"], r["batch_size"], r["resolved_impl"]) for r in records] == [
      ("ae", 16, "subpixel"), ("dae", 16, "subpixel")]
  for r in records:
    assert len(r["train_windows"]) == 2 and min(r["train_windows"]) > 0
    assert r["train_images_per_sec"] == pytest.approx(statistics.median(r["train_windows"]), abs=0.1)
    assert 0 < r["bound_fraction"] < 1 and r["eval_images_per_sec"] > 0
    assert r["minor_faults_per_step"] >= 0


# A jitted function whose 80 MiB temporary (20,480 pages) XLA:CPU allocates on each call.
_FAULTS = """
import resource, sys
import experiments
kept = sys.argv[1] == "keep" and experiments.keep_freed_memory()
import jax, jax.numpy as jnp
f = jax.jit(lambda x_N, w_M: jnp.tanh(x_N[:, None] * w_M[None, :]) @ w_M)
x_N, w_M = jnp.ones(4096), jnp.ones(5120)
assert f.lower(x_N, w_M).compile().memory_analysis().temp_size_in_bytes == 4096 * 5120 * 4
faults = []
for _ in range(60):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x_N, w_M).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(kept, sorted(faults[-40:])[20], min(faults[-40:]))
"""


@pytest.mark.parametrize("keep", [True, False])
def test_keep_freed_memory_stops_faulting_a_large_temporary_in_on_every_call(keep):
  proc = subprocess.run([sys.executable, "-c", _FAULTS, "keep" if keep else "system"], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  kept, median, least = proc.stdout.split()
  assert kept == str(keep)
  if keep:  # the heap grows to hold a few temporaries, then reuses them; a rare call still
    # faults (here the kernel's DAMON reclaims idle pages), hence the median
    assert int(median) < 1_000, proc.stdout
  else:  # glibc maps it afresh and unmaps it on free: every call faults it all in
    assert int(least) > 20_000, proc.stdout


def test_roofline_flops_agree_with_the_reference_counted_by_hand():
  from tools import benchmark, roofline  # pylint: disable=g-import-not-at-top

  out = roofline.analyse("ae_mnist", 8)
  by_hand = benchmark.train_flops_per_image(benchmark.reference_model())  # 3 x the forward's 2 x MACs
  assert out["train_gflop_per_image"] * 1e9 == pytest.approx(by_hand, rel=0.1)  # XLA's: 38.1 MFLOP
  assert out["params"] == 178_001
  assert out["H200 images/s bound"] == pytest.approx(989e12 / by_hand, rel=0.1)  # the peak over the FLOPs
