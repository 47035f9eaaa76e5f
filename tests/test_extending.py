"""docs/extending.md's examples: a user objective, model and data source, defined outside ae_jax/."""

import importlib.util
import json
import os
import sys

import jax
import numpy as np
import pytest

from ae_jax import config as config_lib
from ae_jax import data, models, objectives, probes, train
from conftest import REPO
import runs

EXAMPLES = os.path.join(REPO, "docs", "examples")


@pytest.fixture
def registered():
  """The examples' registrations, undone afterwards (the registries are process-wide)."""
  yield
  objectives.REGISTRY.pop("free_bits", None)
  models.ARCHITECTURES.pop("mlp", None)
  data.SOURCES.pop("bars", None)
  for name in ("free_bits", "mlp", "bars"):
    sys.modules.pop(name, None)


def _example_config():
  spec = importlib.util.spec_from_file_location("example_config", os.path.join(EXAMPLES, "config.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_the_three_plugins_train_together_in_process(registered, tmp_path, capsys):
  c = _example_config()
  c.num_epochs, c.data.bars_count, c.log_every_steps = 1, 256, 2
  assert c.free_bits.nats == 0.5 and c.model.mlp_widths == (128, 64) and c.data.bars_size == 16
  result = train.train_and_evaluate(c, str(tmp_path))
  run = json.loads((tmp_path / "run.json").read_text())
  assert run["objective"] == {"name": "free_bits", "module": "free_bits"}
  assert run["model"] == {"name": "mlp", "module": "mlp"}
  assert run["data_source"] == {"name": "bars", "module": "bars"}
  assert run["config"]["free_bits"] == {"nats": 0.5} and len(run["config"]["plugins"]) == 3
  assert run["data"]["image_shape"] == [16, 16, 1] and run["param_counts"]["total"] > 0
  printed = capsys.readouterr().out
  assert "kl " in printed and "dims_below_free " in printed  # the objective's log_keys, in the log line
  assert result["step"] == 4 and np.isfinite(result["loss"]) and 0 <= result["dims_below_free"] <= 4
  # The free-bits loss by hand: -log p(x|z) + sum_d max(nats, KL_d) >= the negative ELBO.
  assert result["loss"] >= -result["elbo"] - 1e-3
  loaded = probes.load(str(tmp_path))  # the plugins come back from the checkpoint's config
  assert loaded.model.latent == "gaussian" and loaded.config.model.name == "mlp"
  x = data.load(loaded.config.data).test[:3]
  assert probes.reconstruct(loaded.model, loaded.params, x).shape == (3, 16, 16, 1)


def test_a_plugin_flag_brings_its_fields_to_help_and_a_run(registered, tmp_path):
  plugin = os.path.join(EXAMPLES, "mlp.py")
  ae_mnist = os.path.join(REPO, "experiments", "configs", "ae_mnist.py")
  helped = runs.run([sys.executable, "-m", "experiments.train", "--config", ae_mnist, f"--plugins={plugin}",
                     "--help"])
  assert "--config.model.mlp_widths: mlp: hidden widths" in helped.stdout
  assert "expected one of ('reference', 'resnet', 'conv64', 'mlp')" in helped.stdout
  cmd = runs.train_command(tmp_path / "w", (f"--plugins={plugin}", "--config.model.name=mlp",
                                            "--config.model.mlp_widths=(32,)", "--config.num_epochs=1",
                                            "--config.data.train_size=128"), config="ae_mnist.py")
  first = runs.run(cmd)
  assert "model mlp" in first.stderr
  run = json.loads((tmp_path / "w" / "run.json").read_text())
  assert run["model"] == {"name": "mlp", "module": "mlp"} and run["config"]["plugins"] == [plugin]
  assert run["param_counts"]["total"] == (784 * 32 + 32) + (32 * 16 + 16) + (16 * 32 + 32) + (32 * 784 + 784)
  again = runs.run(cmd)  # a rerun imports the plugin again and finds the run finished
  assert "nothing to do" in again.stderr
  bad = runs.run([*cmd, "--plugins=docs/examples/nope.py"], check=False)
  assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == (
      "error: --plugins: plugins: 'docs/examples/nope.py': no such file")


def test_the_free_bits_objective_against_numpy(registered):
  config_lib.import_plugins([os.path.join(EXAMPLES, "free_bits.py")])
  import oracle  # pylint: disable=g-import-not-at-top
  c = oracle.tiny_config("free_bits", free_bits__nats=0.3)
  model = oracle.tiny_model(c)
  params = models.init_params(model, jax.random.key(0))
  x = np.round(np.asarray(jax.random.uniform(jax.random.key(1), (4, 8, 8, 1))))
  batch = {"image": x, "input": x, "position": np.arange(4)}
  loss_B, m, stats = objectives.bind(c, model.apply)(params, batch, jax.random.key(2))
  mean, logvar = (np.asarray(a, np.float64) for a in model.apply({"params": params}, x, method="posterior"))
  kl_BD = 0.5 * (mean**2 + np.exp(logvar) - 1 - logvar)
  np.testing.assert_allclose(m["kl"], kl_BD.sum(-1), rtol=1e-5)
  nll = -(np.asarray(m["elbo"]) + kl_BD.sum(-1))  # -log p(x|z) of the same sample
  np.testing.assert_allclose(loss_B, nll + np.maximum(0.3, kl_BD).sum(-1), rtol=1e-5)
  np.testing.assert_array_equal(m["dims_below_free"], (kl_BD < 0.3).sum(-1))
  assert stats == {}
