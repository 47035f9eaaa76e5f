r"""VQ-VAE (van den Oord et al. 2017): the reference conv stack keeps its 7x7 grid of 16-d
vectors, each quantised to one of 512 codes; commitment 0.25, EMA codebook (decay 0.99, as the
Sonnet and Haiku examples); batch 128, 10 epochs."""

from experiments.configs import ae_mnist


def get_config():
  c = ae_mnist.get_config()
  c.objective = "vqvae"
  c.model.num_codes = 512
  c.vq.commitment = 0.25
  c.vq.ema_decay = 0.99
  c.batch_size = 128
  c.num_epochs = 10
  c.eval.final = True
  return c
