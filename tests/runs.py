"""Runs of the real entry point for the end-to-end tests: the command, and a run that must succeed."""

import os
import subprocess
import sys

from ae_jax import train
from conftest import REPO

# Small enough for tests of many reruns; checkpoints every 3 steps and at each epoch.
SMALL = ("--config.data.source=embedded", "--config.data.train_size=512", "--config.data.test_size=128",
         "--config.num_epochs=3", "--config.batch_size=32", "--config.checkpoint_every_steps=3",
         "--config.log_every_steps=4", "--config.eval_batch_size=128", "--config.num_images=4")


def train_command(workdir, extra=(), config: str = "dae_mnist.py") -> list[str]:
  """python -m experiments.train with a config of experiments/configs and the SMALL budget."""
  return [sys.executable, "-m", "experiments.train",
          "--config", os.path.join(REPO, "experiments", "configs", config), "--workdir", str(workdir), *SMALL,
          *extra]


def run(cmd, check: bool = True, env=None, timeout: float = 600) -> subprocess.CompletedProcess:
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
  if check:
    assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def assert_same_run(a, b) -> None:
  """Two workdirs hold the same run: params bit for bit, eval.json and metrics.jsonl (timings aside)."""
  same = train.compare_runs(str(a), str(b))
  assert same["params_bit_identical"] and same["eval_json_identical"] and same["metrics_identical"], same
