r"""The reference denoising AE on MNIST: input clip(x + N(0.5, 0.5^2), 0, 1), clean target, 10 epochs.

Online (TFDS):
  python -m experiments.train --config experiments/configs/dae_mnist.py --workdir runs/dae_mnist
Offline (IDX files):
  python -m experiments.train --config experiments/configs/dae_mnist.py --workdir runs/dae_mnist \
    --config.data.source=idx --config.data.dir=../shared/data/mnist
"""

from experiments.configs import ae_mnist


def get_config():
  c = ae_mnist.get_config()  # the reference model, batch 32, Adam 1e-3, MSE
  c.num_epochs = 10
  c.noise.kind = "gaussian"
  c.noise.mean = 0.5
  c.noise.std = 0.5
  c.noise.clip = True
  return c
