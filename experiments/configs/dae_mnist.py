r"""The reference denoising AE on MNIST: x + N(0.5, 0.5^2) clipped to [0, 1], 10 epochs, batch 32, MSE.

Online (TFDS):
  python -m experiments.train --config experiments/configs/dae_mnist.py --workdir runs/dae_mnist
Offline (IDX files):
  python -m experiments.train --config experiments/configs/dae_mnist.py --workdir runs/dae_mnist \
    --config.data.source=idx --config.data.dir=../shared/data/mnist
"""

from ae_jax import config as config_lib


def get_config():
  c = config_lib.get_default()
  c.data.source = "tfds"
  c.data.name = "mnist"
  c.batch_size = 32
  c.num_epochs = 10
  c.learning_rate = 1e-3
  c.loss = "mse"
  c.noise.kind = "gaussian"
  c.noise.mean = 0.5
  c.noise.std = 0.5
  c.noise.clip = True
  return c
