r"""beta-VAE (Higgins et al. 2017): vae_mnist.py with the KL weighted by beta = 4."""

from experiments.configs import vae_mnist


def get_config():
  c = vae_mnist.get_config()
  c.vae.beta = 4.0
  return c
