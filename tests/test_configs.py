"""Every config in experiments/configs validates and builds its model (shapes only: jax.eval_shape)."""

import importlib
import os

import jax
import jax.numpy as jnp
import pytest

from ae_jax import config as config_lib
from ae_jax import models, train
from conftest import REPO

CONFIGS = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "experiments", "configs"))
                 if f.endswith(".py") and f != "__init__.py")
# The image shape each config is for, and its parameter count there (docs/models.md lists them).
SHAPES = {"resnet_ae_folder": (64, 64, 3), "kl_f8_vae_folder": (64, 64, 3), "vae_cifar10": (32, 32, 3),
          "dsprites": (64, 64, 1)}
PARAMS = {"ae_mnist": 178_001, "resnet_ae_folder": 13_833_799, "kl_f8_vae_folder": 83_604_622,
          "vae_cifar10": 15_156_310, "dsprites": 690_517}


@pytest.mark.parametrize("name", CONFIGS)
def test_config_validates_and_builds(name):
  c = importlib.import_module(f"experiments.configs.{name}").get_config()
  if c.data.source == "folder":
    c.data.dir = "pictures"  # the user's flag (validate does not read the folder)
  config_lib.validate(c)
  model = train.build_model(c, SHAPES.get(name, (28, 28, 1)))
  x = jnp.zeros((1, *model.image_shape))
  params = jax.eval_shape(lambda k: model.init(k, x)["params"], jax.random.key(0))
  count = models.count_params(params)
  print(f"{name}: {c.model.name}, {count:,} params")
  if name in PARAMS:
    assert count == PARAMS[name], count
