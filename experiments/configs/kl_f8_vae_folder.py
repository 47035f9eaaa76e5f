r"""A KL-f8-style VAE for a folder of colour pictures at 64x64: latent diffusion's KL autoencoder
layout (model.name='resnet', widths 128, 256, 512, 512, two blocks a level, attention in the middle)
with a Gaussian posterior of 4 channels per position of the 8x8 grid (`double_z`), the discretized
Gaussian likelihood with its per-channel EMA scale (bits/dim), beta 1, Adam 1e-4, batch 32.

  python -m experiments.train --config experiments/configs/kl_f8_vae_folder.py --workdir runs/kl_f8 \
    --config.data.dir=~/pictures

Latent diffusion trains its KL-f8 with an L1 + LPIPS + GAN loss and a KL weight of 1e-6; this is the
likelihood version of its architecture. A GPU/TPU set-up.
"""

from ae_jax import config as config_lib


def get_config():
  c = config_lib.get_default()
  c.objective = "vae"
  c.vae.likelihood = "discretized_gaussian"
  c.vae.scale_fit = "ema"
  c.data.source = "folder"
  c.data.image_size = 64
  c.data.channels = 3
  c.data.binarize = "none"
  c.model.name = "resnet"
  c.model.channels = 128
  c.model.channel_mult = (1, 2, 4, 4)
  c.model.num_res_blocks = 2
  c.model.latent_grid = True
  c.model.latent_dim = 4
  c.learning_rate = 1e-4
  c.batch_size = 32
  c.num_epochs = 50
  c.eval.final = True
  return c
