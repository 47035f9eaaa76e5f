r"""A residual autoencoder for a folder of colour pictures at 64x64: latent diffusion's encoder and
decoder (model.name='resnet', widths 64, 128, 256, two blocks a level, attention in the middle), a
4-channel latent per position of the 16x16 grid (f = 4), MSE, Adam 1e-4 with warm-up, batch 32.

  python -m experiments.train --config experiments/configs/resnet_ae_folder.py --workdir runs/resnet_ae \
    --config.data.dir=~/pictures

A GPU/TPU set-up: 43 GFLOP a picture for a train step (python -m tools.roofline); on 2 CPU cores use
--config.model.channels=32 --config.model.num_res_blocks=1 for a try.
"""

from ae_jax import config as config_lib


def get_config():
  c = config_lib.get_default()
  c.objective = "ae"
  c.loss = "mse"
  c.data.source = "folder"
  c.data.image_size = 64
  c.data.channels = 3
  c.model.name = "resnet"
  c.model.channels = 64
  c.model.channel_mult = (1, 2, 4)
  c.model.num_res_blocks = 2
  c.model.latent_grid = True
  c.model.latent_dim = 4
  c.learning_rate = 1e-4
  c.lr_schedule = "warmup_cosine"
  c.warmup_steps = 500
  c.batch_size = 32
  c.num_epochs = 50
  c.eval.final = True
  return c
