r"""The reference convolutional AE on MNIST: latent 16, batch 32, 1 epoch, Adam 1e-3, MSE.

Online (TFDS):
  python -m experiments.train --config experiments/configs/ae_mnist.py --workdir runs/ae_mnist
Offline (IDX files):
  python -m experiments.train --config experiments/configs/ae_mnist.py --workdir runs/ae_mnist \
    --config.data.source=idx --config.data.dir=../shared/data/mnist
"""

from ae_jax import config as config_lib


def get_config():
  c = config_lib.get_default()
  c.data.source = "tfds"
  c.data.name = "mnist"
  c.batch_size = 32
  c.num_epochs = 1
  c.learning_rate = 1e-3
  c.loss = "mse"
  return c
