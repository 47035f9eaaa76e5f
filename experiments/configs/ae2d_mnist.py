r"""The reference AE with a 2-D latent space, 20 epochs: for drawing the digit manifold.

  python -m experiments.train --config experiments/configs/ae2d_mnist.py --workdir runs/ae2d \
    --config.data.source=idx --config.data.dir=~/data/mnist
  python -m experiments.probe --workdir runs/ae2d
"""

from experiments.configs import ae_mnist


def get_config():
  c = ae_mnist.get_config()
  c.model.latent_dim = 2
  c.num_epochs = 20
  return c
