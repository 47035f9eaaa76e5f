"""Every config field is declared once: defaults, checks, rerun rules and docs/config.md come from it."""

import os
import re

import ml_collections
import pytest

from ae_jax import config as config_lib
from ae_jax import fields, objectives
from conftest import REPO

# A value of the wrong kind for each kind of check.
WRONG = {"seed": -1, "objective": "gan", "plugins": ("",), "loss": "l1", "batch_size": 0, "num_epochs": 1.5,
         "optimizer": "lamb", "learning_rate": -1.0, "lr_schedule": "step", "warmup_steps": -1,
         "weight_decay": -0.1, "grad_clip_norm": 0.0, "ema_decay": 1.0, "model.pad": "yes",
         "parallel": "ddp", "num_devices": -2,
         "steps_per_call": 0, "data_on_device": "yes", "eval_batch_size": None,
         "log_every_steps": 0, "checkpoint_every_steps": -1, "keep_checkpoints": 0,
         "num_images": 0, "model.filters": (), "model.kernel_size": 0, "model.latent_dim": 2.0,
         "model.output": "softmax", "model.conv_impl": "cudnn", "model.dtype": "float16",
         "model.name": "resnet50", "model.channels": 0, "model.channel_mult": (), "model.num_res_blocks": 0,
         "model.attention_resolutions": (0,), "model.norm": "batch", "model.norm_groups": 0,
         "model.latent_grid": "yes", "model.remat": 1, "model.shard": 0, "model.shard_min_size": -1,
         "noise.kind": "speckle", "noise.mean": "half", "noise.std": -0.1, "noise.clip": 1,
         "noise.nu": 1.5, "data.source": "hub", "data.name": "", "data.dir": "",
         "data.download": "no", "data.train_size": 0, "data.test_size": -1, "data.stream": "auto",
         "data.image_size": 0, "data.channels": 4, "data.test_fraction": 1.0, "data.workers": 0,
         "data.skip_bad": "yes",
         "model.num_codes": 0, "vae.likelihood": "poisson", "vae.scale": 0.0, "vae.scale_fit": "adam",
         "vae.scale_decay": 1.0, "vae.beta": -1.0,
         "vae.kl_warmup_steps": -5, "vae.num_samples": 0, "sparse.penalty": "l2", "sparse.weight": -1e-3,
         "sparse.target": 1.0, "contractive.weight": "high", "contractive.probes": 0, "vq.commitment": -0.25,
         "vq.ema_decay": 1.5, "beta_tcvae.beta": -1.0, "dip_vae.kind": "iii", "dip_vae.lambda_od": -1.0,
         "dip_vae.lambda_d": "ten", "annealed_vae.gamma": -1.0, "annealed_vae.c_max": -5.0,
         "annealed_vae.ramp_steps": 0, "factor_vae.gamma": -1.0, "factor_vae.widths": (),
         "factor_vae.learning_rate": 0.0,
         "factor_vae.b1": 1.0, "factor_vae.b2": 0.0, "data.dsprites_variant": "rgb",
         "eval.factor_metrics": "yes", "eval.factor_points": 0, "eval.factor_eval_points": -1,
         "eval.factor_batch": 0,
         "data.binarize": "static", "eval.final": "yes", "eval.final_examples": 0, "eval.nll_samples": 0,
         "eval.nll_examples": 0,
         "eval.num_samples": -1, "eval.gmm_components": 0, "eval.collapse": "ignore"}


def _set(c, name, value):
  *parents, leaf = name.split(".")
  node = c
  for p in parents:
    node = node[p]
  node[leaf] = value


def test_defaults_are_valid_and_every_field_is_declared_once():
  c = config_lib.get_default()
  config_lib.validate(c)
  names = [f.name for f in config_lib.all_fields()]
  assert len(names) == len(set(names))
  assert sorted(config_lib.flatten(c)) == sorted(names)
  assert sorted(WRONG) == sorted(names)  # a wrong value below for every field


@pytest.mark.parametrize("field", config_lib.all_fields(), ids=lambda f: f.name)
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
  c.objective, c.vae.scale = "vae", 0.1  # the vae objective's own check
  with pytest.raises(ValueError, match=r"^vae.scale=0.1: only vae.likelihood='gaussian' or 'discretized_g"):
    config_lib.validate(c)
  c.vae.likelihood = "gaussian"
  config_lib.validate(c)


def test_docs_field_table_is_the_declared_one():
  with open(os.path.join(REPO, "docs", "config.md")) as f:
    page = f.read()
  table = re.search(r"\| field \| default \|.*?(\n\n|$)", page, re.S)
  assert table, "docs/config.md has no config field table"
  assert table.group(0).strip() == config_lib.markdown_table(), \
      "regenerate with: python -c 'from ae_jax import config; print(config.markdown_table())'"


def test_near_misses_are_suggested():
  c = config_lib.get_default()
  c.unlock()
  c.learnig_rate = 0.1
  with pytest.raises(ValueError, match=r"^learnig_rate: unknown config key \(did you mean learning_rate\?\)"):
    config_lib.validate(c)


def test_plugins_are_imported_once_and_their_fields_join_the_config(tmp_path):
  plugin = tmp_path / "plugin_for_config_test.py"
  plugin.write_text(
      "from ae_jax import fields, objectives\n"
      "from ae_jax.objectives import reconstruction\n"
      "IMPORTS = globals().setdefault('IMPORTS', 0) + 1\n"
      "W = fields.Field('twice.weight', 2.0, fields.POSITIVE_NUMBER, fields.ALLOW, 'test: a weight')\n"
      "objectives.register('twice', objectives.Objective(reconstruction.AE.bind,\n"
      "                                                  fields=(reconstruction.LOSS, W)))\n")
  try:
    c = config_lib.get_default(plugins=(str(plugin),))
    config_lib.get_default(plugins=(str(plugin),))  # a second import would re-register
    assert c.twice.weight == 2.0 and c.plugins == (str(plugin),)
    assert objectives.REGISTRY["twice"].module == "plugin_for_config_test"
    c.objective = "twice"
    config_lib.validate(c)
    c.twice.weight = -1.0
    with pytest.raises(ValueError, match=r"^twice.weight=-1.0: expected a positive number$"):
      config_lib.validate(c)
    assert "twice.weight" not in config_lib.markdown_table()  # the docs list the built-in fields
    clash = fields.Field("twice.weight", 3.0, fields.POSITIVE_NUMBER, fields.ALLOW, "declared again")
    objectives.register("twice_again",
                        objectives.Objective(objectives.reconstruction.AE.bind, fields=(clash,)))
    with pytest.raises(ValueError, match="config field 'twice.weight' is declared twice"):
      config_lib.all_fields()
  finally:
    objectives.REGISTRY.pop("twice", None)
    objectives.REGISTRY.pop("twice_again", None)
  with pytest.raises(ValueError, match=r"^plugins: '.*nope.py': no such file$"):
    config_lib.import_plugins([str(tmp_path / "nope.py")])
  with pytest.raises(ValueError, match=r"^plugins: 'no_such_module_here' cannot be imported"):
    config_lib.import_plugins(["no_such_module_here"])
