r"""A residual VAE on CIFAR-10 (32x32x3) in bits/dim: model.name='resnet' (widths 64, 128, 256, two
blocks a level, attention at 8x8 and in the middle), a Gaussian posterior of 8 channels per
position of the 8x8 grid, the discretized Gaussian likelihood with its per-channel EMA scale,
Adam 2e-4, batch 64, 100 epochs.

  python -m experiments.train --config experiments/configs/vae_cifar10.py --workdir runs/vae_cifar10 \
    --config.data.dir=~/tensorflow_datasets

The data is TFDS `cifar10` (prepared once by TFDS, or with --config.data.download=false from a
data_dir that already holds it), streamed from its ArrayRecord files with --config.data.stream=true.
"""

from ae_jax import config as config_lib


def get_config():
  c = config_lib.get_default()
  c.objective = "vae"
  c.vae.likelihood = "discretized_gaussian"
  c.vae.scale_fit = "ema"
  c.data.source = "tfds"
  c.data.name = "cifar10"
  c.data.binarize = "none"
  c.model.name = "resnet"
  c.model.channels = 64
  c.model.channel_mult = (1, 2, 4)
  c.model.num_res_blocks = 2
  c.model.attention_resolutions = (8,)
  c.model.latent_grid = True
  c.model.latent_dim = 8
  c.learning_rate = 2e-4
  c.batch_size = 64
  c.num_epochs = 100
  c.eval.final = True
  return c
