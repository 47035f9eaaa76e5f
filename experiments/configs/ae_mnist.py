r"""The reference convolutional AE on MNIST: the defaults (latent 16, batch 32, 1 epoch, Adam 1e-3, MSE).

Online (TFDS):
  python -m experiments.train --config experiments/configs/ae_mnist.py --workdir runs/ae_mnist
Offline (the four MNIST IDX files in a folder of yours):
  python -m experiments.train --config experiments/configs/ae_mnist.py --workdir runs/ae_mnist \
    --config.data.source=idx --config.data.dir=~/data/mnist
"""

from ae_jax import config as config_lib


def get_config():
  return config_lib.get_default()  # ae_jax/config.py declares the reference as the defaults
