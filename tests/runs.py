"""Runs of the real entry point for the end-to-end tests: the command, and a run that must succeed."""

import os
import subprocess
import sys

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
