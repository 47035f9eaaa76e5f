r"""All three of your own plug-ins in one run: the free-bits VAE, the MLP model, the bars data.

  python -m experiments.train --config docs/examples/config.py --workdir runs/mine

The one line that makes them part of ae_jax is `get_default(plugins=...)`: it
imports the files (they register themselves), so their fields are config
fields with checks and `--help`, and run.json records where they came from.
"""

import os

from ae_jax import config as config_lib

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config():
  c = config_lib.get_default(plugins=[os.path.join(HERE, f) for f in ("free_bits.py", "mlp.py", "bars.py")])
  c.objective, c.model.name, c.data.source = "free_bits", "mlp", "bars"
  c.data.binarize = "dynamic"  # bars are binary already; the Bernoulli likelihood fits them
  c.model.latent_dim, c.model.mlp_widths = 4, (128, 64)
  c.batch_size, c.num_epochs, c.log_every_steps = 64, 3, 32
  return c
