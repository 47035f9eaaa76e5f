r"""The reference DAE on the embedded offline digits (4,500 train / 500 test); about a minute on 2 CPU cores.

  python -m experiments.train --config experiments/configs/quickstart.py --workdir runs/quickstart
"""

from experiments.configs import dae_mnist


def get_config():
  c = dae_mnist.get_config()
  c.data.source = "embedded"
  c.num_epochs = 4
  c.eval_batch_size = 500
  c.log_every_steps = 50
  return c
