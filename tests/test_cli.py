"""The command line as a user meets it: --help, near-miss flags, and a signal at any moment."""

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO

CONFIG = os.path.join(REPO, "experiments", "configs", "quickstart.py")


def _cli(*args, timeout=120):
  return subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)


def test_help_lists_every_config_field_and_exits_0():
  proc = _cli("--config", CONFIG, "--help")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "--workdir" in proc.stdout and "--num_processes" in proc.stdout
  from ae_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  for f in config_lib.all_fields():
    assert f"--config.{f.name}: " in proc.stdout, f.name
  assert "default 16; expected a positive integer; rerun: never" in proc.stdout  # model.latent_dim


@pytest.mark.parametrize("command,own", [("train", "allow_config_change"), ("compare", "--members"),
                                         ("probe", "--max_train"), ("noise_sweep", "--num_images")])
def test_every_command_help_lists_its_own_flags_first(command, own):
  proc = subprocess.run([sys.executable, "-m", f"experiments.{command}", "--help"], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  head = proc.stdout.split("experiments.cli:")[0]  # the command's own flags come before the shared ones
  assert own in head and "--workdir" in head, proc.stdout[:2000]
  assert "absl.logging" not in proc.stdout  # the libraries' flags only with --helpfull


def test_an_override_without_a_config_file_says_what_is_missing():
  proc = _cli("--workdir=x", "--config.data.source=embedded")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")] == [
      "error: --config.data.source: overrides a config field, so it needs a config file first: add "
      "--config experiments/configs/NAME.py (ae_mnist.py holds the defaults)"]


@pytest.mark.parametrize("args,expected", [
    (["--num_epochs=2"], "error: --num_epochs: unknown flag (did you mean --config.num_epochs?)"),
    (["--workdirr=x"], "error: --workdirr: unknown flag (did you mean --workdir?); see --help"),
])
def test_near_miss_flags_get_a_suggestion(args, expected):
  proc = _cli("--config", CONFIG, *args)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")] == [expected]


@pytest.mark.parametrize("delay_s", [0.5, 2.0, 6.0])
def test_ctrl_c_at_any_moment_is_one_line_and_130(tmp_path, delay_s):
  # At 0.5 s the process is importing (a library once swallowed that KeyboardInterrupt and the
  # run went on), at 2 s initialising JAX or compiling, at 6 s training. Each way: exit 130,
  # one line, no traceback, no crash (it was 139 once).
  workdir = tmp_path / "run"
  proc = subprocess.Popen([sys.executable, "-m", "experiments.train", "--config", CONFIG,
                           "--workdir", str(workdir)], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  time.sleep(delay_s)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err[-3000:]
  assert "Traceback" not in err and "Segmentation fault" not in err and "Fatal Python" not in err
  errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
  assert len(errors) == 1 and errors[0].startswith("error: stopped by SIGINT"), err[-2000:]


def test_start_up_imports_no_plotting_or_tensorflow():
  # Matplotlib (~0.3 s) is imported when the first picture is drawn, TFDS and TensorFlow only
  # for data.source='tfds': a run on IDX files, and code that imports ae_jax, never pay for them.
  code = ("import sys, ae_jax, experiments.train, experiments.cli; print(sorted(m for m in "
          "('matplotlib', 'tensorflow', 'tensorflow_datasets') if m in sys.modules))")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == "[]"
