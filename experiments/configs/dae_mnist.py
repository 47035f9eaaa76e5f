r"""The reference denoising AE on MNIST: input clip(x + N(0.5, 0.5^2), 0, 1), clean target, 10 epochs.

  python -m experiments.train --config experiments/configs/dae_mnist.py --workdir runs/dae_mnist
  (offline: add --config.data.source=idx --config.data.dir=FOLDER_OF_THE_FOUR_IDX_FILES)
"""

from ae_jax import config as config_lib


def get_config():
  c = config_lib.get_default()  # the reference model, batch 32, Adam 1e-3, MSE
  c.num_epochs = 10
  c.noise.kind = "gaussian"  # noise.mean 0.5, noise.std 0.5 and noise.clip are the defaults
  return c
