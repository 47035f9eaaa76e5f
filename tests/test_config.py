"""Every config field is declared once: defaults, checks, rerun rules and the README table come from it."""

import os
import re

import ml_collections
import pytest

from ae_jax import config as config_lib
from conftest import REPO

# A value of the wrong kind for each kind of check.
WRONG = {"seed": -1, "objective": "gan", "loss": "l1", "batch_size": 0, "num_epochs": 1.5,
         "optimizer": "lamb", "learning_rate": -1.0, "lr_schedule": "step", "warmup_steps": -1,
         "weight_decay": -0.1, "grad_clip_norm": 0.0, "ema_decay": 1.0, "model.pad": "yes",
         "parallel": "ddp", "num_devices": -2,
         "steps_per_call": 0, "data_on_device": "yes", "eval_batch_size": None,
         "log_every_steps": 0, "checkpoint_every_steps": -1, "keep_checkpoints": 0,
         "num_images": 0, "model.filters": (), "model.kernel_size": 0, "model.latent_dim": 2.0,
         "model.output": "softmax", "model.conv_impl": "cudnn", "model.dtype": "float16",
         "noise.kind": "speckle", "noise.mean": "half", "noise.std": -0.1, "noise.clip": 1,
         "noise.nu": 1.5, "data.source": "hub", "data.name": "", "data.dir": "",
         "data.download": "no", "data.train_size": 0, "data.test_size": -1,
         "model.num_codes": 0, "vae.likelihood": "poisson", "vae.scale": 0.0, "vae.beta": -1.0,
         "vae.kl_warmup_steps": -5, "vae.num_samples": 0, "sparse.penalty": "l2", "sparse.weight": -1e-3,
         "sparse.target": 1.0, "contractive.weight": "high", "vq.commitment": -0.25, "vq.ema_decay": 1.5,
         "data.binarize": "static", "eval.final": "yes", "eval.nll_samples": 0, "eval.nll_examples": 0,
         "eval.num_samples": -1, "eval.gmm_components": 0}


def _set(c, name, value):
  *parents, leaf = name.split(".")
  node = c
  for p in parents:
    node = node[p]
  node[leaf] = value


def test_defaults_are_valid_and_every_field_is_declared_once():
  c = config_lib.get_default()
  config_lib.validate(c)
  names = [f.name for f in config_lib.FIELDS]
  assert len(names) == len(set(names))
  assert sorted(config_lib.flatten(c)) == sorted(names)


@pytest.mark.parametrize("field", config_lib.FIELDS, ids=lambda f: f.name)
def test_every_field_is_checked(field):
  # Not type-safe, so that a value of the wrong type reaches validate, as from a config file.
  c = ml_collections.ConfigDict(config_lib.get_default().to_dict(), type_safe=False)
  _set(c, field.name, WRONG[field.name])
  with pytest.raises(ValueError) as e:
    config_lib.validate(c)
  assert str(e.value) == f"{field.name}={WRONG[field.name]!r}: expected {field.check.expected}"


def test_resume_rules_come_from_the_declaration():
  saved = config_lib.get_default().to_dict()
  c = config_lib.get_default()
  c.num_epochs, c.log_every_steps, c.parallel = 5, 7, "mesh"  # free
  assert config_lib.resume_conflicts(saved, c) == ([], [])
  c.learning_rate, c.noise.std = 0.01, 0.3  # allowed with --allow_config_change
  changed, reshaping = config_lib.resume_conflicts(saved, c)
  assert changed == ["learning_rate: 0.001 -> 0.01", "noise.std: 0.5 -> 0.3"] and reshaping == []
  c.model.latent_dim = 8  # never: the params' shapes change
  assert config_lib.resume_conflicts(saved, c)[1] == ["model.latent_dim: 16 -> 8"]
  del saved["objective"]  # a run saved before the field existed held its default
  c = config_lib.get_default()
  assert config_lib.resume_conflicts(saved, c) == ([], [])


def test_a_scale_without_a_gaussian_likelihood_is_refused():
  c = config_lib.get_default()
  c.vae.scale = 0.1
  with pytest.raises(ValueError, match=r"^vae.scale=0.1: only vae.likelihood='gaussian' has a scale"):
    config_lib.validate(c)
  c.vae.likelihood = "gaussian"
  config_lib.validate(c)


def test_readme_field_table_is_the_declared_one():
  with open(os.path.join(REPO, "README.md")) as f:
    readme = f.read()
  table = re.search(r"\| field \| default \|.*?\n\n", readme, re.S)
  assert table, "README.md has no config field table"
  assert table.group(0).strip() == config_lib.markdown_table(), \
      "regenerate with: python -c 'from ae_jax import config; print(config.markdown_table())'"


def test_near_misses_are_suggested():
  c = config_lib.get_default()
  c.unlock()
  c.learnig_rate = 0.1
  with pytest.raises(ValueError, match=r"^learnig_rate: unknown config key \(did you mean learning_rate\?\)"):
    config_lib.validate(c)
