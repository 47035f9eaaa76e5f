"""Bad input: one line naming the field, the value and what is allowed; exit 2; nothing written."""

import os
import subprocess

import pytest

from ae_jax import checkpoint, train
from ae_jax import config as config_lib
from conftest import REPO
from experiments.configs import quickstart
import oracle
import runs


def _cfg(**overrides):
  c = config_lib.get_default()
  c.data.source = "embedded"
  return oracle.set_fields(c, **overrides)


BAD_CONFIGS = [
    (dict(batch_size=0), "batch_size=0: expected a positive integer"),
    (dict(num_epochs=-1), "num_epochs=-1: expected a positive integer"),
    (dict(steps_per_call=0), "steps_per_call=0: expected None or a positive integer"),
    (dict(learning_rate=-1e-3), "learning_rate=-0.001: expected a positive number"),
    (dict(seed=-3), "seed=-3: expected an integer >= 0"),
    (dict(optimizer="rmsprop"), "optimizer='rmsprop': expected one of ('adam', 'adamw', 'sgd')"),
    (dict(loss="l1"), "loss='l1': expected one of ('mse', 'bce')"),
    (dict(parallel="ddp"), "parallel='ddp': expected one of ('jit', 'pmap', 'mesh')"),
    (dict(noise__kind="speckle"), "noise.kind='speckle': expected one of"),
    (dict(noise__kind="gaussian", noise__std=-0.5), "noise.std=-0.5: expected a number >= 0"),
    (dict(noise__kind="masking", noise__nu=1.5), r"noise.nu=1.5: expected a fraction in [0, 1]"),
    (dict(noise__kind="salt_and_pepper", noise__nu=-0.1), "noise.nu=-0.1: expected a fraction"),
    (dict(model__output="softmax"), "model.output='softmax': expected one of"),
    (dict(model__latent_dim=0), "model.latent_dim=0: expected a positive integer"),
    (dict(model__filters=(32, 0)), "model.filters=(32, 0): expected a non-empty tuple of positive"),
    (dict(data__source="hub"), "data.source='hub': expected one of ('tfds', 'idx', 'npz', 'embedded', "
                               "'folder', 'array_record', 'dsprites')"),
    (dict(data__source="idx"), "data.dir=None: data.source='idx' needs"),
    (dict(data__train_size=0), "data.train_size=0: expected None or a positive integer"),
    (dict(num_devices=0), "num_devices=0: expected None or a positive integer"),
]


@pytest.mark.parametrize("overrides,message", BAD_CONFIGS)
def test_bad_config_field_is_named_before_any_work(tmp_path, overrides, message):
  workdir = tmp_path / "run"
  with pytest.raises(ValueError) as e:
    train.train_and_evaluate(_cfg(**overrides), str(workdir))
  assert str(e.value).startswith(message) and "\n" not in str(e.value)
  assert not workdir.exists()


@pytest.mark.parametrize("overrides,message", [
    (dict(model__filters=(8, 16, 32, 64)), "image_shape=(28, 28, 1): H and W must be divisible by 16, the "
                                           "downsampling of model.name='reference'"),
    (dict(batch_size=5000), "batch_size=5000: larger than the 4500 training examples"),
    (dict(parallel="pmap", batch_size=30), "batch_size=30: does not divide across 4 devices"),
    (dict(parallel="mesh", num_devices=8), "num_devices=8: only 4 local devices"),
    (dict(data__train_size=9999), r"data.train_size=9999: must be in [1, 4500]"),
])
def test_bad_combinations_are_refused_before_writing(tmp_path, overrides, message):
  workdir = tmp_path / "run"
  with pytest.raises(ValueError) as e:
    train.train_and_evaluate(_cfg(**overrides), str(workdir))
  assert str(e.value).startswith(message), str(e.value)
  assert not workdir.exists()


def test_unknown_config_key_in_a_config_object(tmp_path):
  c = _cfg()
  c.unlock()
  c.model.depth = 3
  with pytest.raises(ValueError, match=r"^model.depth: unknown config key"):
    train.train_and_evaluate(c, str(tmp_path / "run"))


def test_workdir_not_writable(tmp_path):
  a_file = tmp_path / "file"
  a_file.write_text("x")
  with pytest.raises(ValueError, match=r"workdir='.*file/run': .*file is not a directory"):
    train.train_and_evaluate(_cfg(), str(a_file / "run"))
  with pytest.raises(ValueError, match=r"workdir='/proc/run': not writable"):
    train.check_workdir("/proc/run")


# --- through the command line ----------------------------------------------------------


def _cli(workdir, *args):
  cmd = [*runs.train_command(workdir)[:3], *args, "--workdir", str(workdir)]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                        env={**os.environ, "JAX_NUM_CPU_DEVICES": "4"})


def _one_line_error(proc, expected_start):
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
  assert len(errors) == 1 and errors[0].startswith(expected_start), proc.stderr[-2000:]


CONFIG = os.path.join(REPO, "experiments", "configs", "quickstart.py")


@pytest.mark.parametrize("args,expected", [
    (["--config", CONFIG, "--config.modle.latent_dim=3"],
     "error: --config.modle.latent_dim: unknown config key (did you mean model.latent_dim?)"),
    (["--config", CONFIG, "--config.learnig_rate=0.1"],
     "error: --config.learnig_rate: unknown config key (did you mean learning_rate?)"),
    (["--config", CONFIG, "--config.batch_size=big"], "error: flag --config.batch_size=big: invalid literal"),
    (["--config", "experiments/configs/nope.py"], "error: --config: cannot load the config file"),
    (["--config", CONFIG, "--config.noise.std=-1.0"], "error: noise.std=-1.0: expected a number >= 0"),
    (["--config", CONFIG, "--config.parallel=pmap", "--config.batch_size=30"],
     "error: batch_size=30: does not divide across 4 devices (parallel='pmap'); use a multiple of 4"),
])
def test_command_line_errors(tmp_path, args, expected):
  proc = _cli(tmp_path / "run", *args)
  _one_line_error(proc, expected)
  assert not (tmp_path / "run").exists()


def test_incompatible_workdir_is_refused_unless_overridden(tmp_path):
  # In-process runs for what the library decides; the command line twice, for its error and flag.
  workdir = tmp_path / "run"

  def cfg(**overrides):
    c = quickstart.get_config()
    c.data.train_size, c.data.test_size, c.num_epochs = 64, 32, 1
    c.update(overrides)
    return c

  train.train_and_evaluate(cfg(), str(workdir))
  before = sorted(os.listdir(workdir))
  mtimes = {f: os.path.getmtime(workdir / f) for f in before}
  small = ["--config", CONFIG, "--config.data.train_size=64", "--config.data.test_size=32"]
  proc = _cli(workdir, *small, "--config.num_epochs=1", "--config.learning_rate=0.01",
              "--config.noise.std=0.3")
  _one_line_error(proc, f"error: workdir='{workdir}' holds a run with another config or data "
                        "(learning_rate: 0.001 -> 0.01; noise.std: 0.5 -> 0.3)")
  assert sorted(os.listdir(workdir)) == before
  assert all(os.path.getmtime(workdir / f) == t for f, t in mtimes.items())
  # Changing what does not alter learning is fine; an explicit override continues anyway.
  train.train_and_evaluate(cfg(num_epochs=2, log_every_steps=7), str(workdir))
  proc = _cli(workdir, *small, "--config.num_epochs=3", "--config.learning_rate=0.01",
              "--allow_config_change")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert checkpoint.read_latest(str(workdir))[0] == 3 * (64 // cfg().batch_size)
  # A model of another shape cannot continue, override or not.
  with pytest.raises(ValueError) as e:
    train.train_and_evaluate(cfg(num_epochs=4, model=dict(latent_dim=8)), str(workdir),
                             allow_config_change=True)
  assert str(e.value).startswith(f"workdir='{workdir}' holds a model of another shape "
                                 "(model.latent_dim: 16 -> 8): its parameters or optimizer state "
                                 "cannot be loaded")
