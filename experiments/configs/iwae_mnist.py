r"""IWAE (Burda et al. 2016): vae_mnist.py trained on the k = 5 importance-weighted bound."""

from experiments.configs import vae_mnist


def get_config():
  c = vae_mnist.get_config()
  c.objective = "iwae"
  c.vae.num_samples = 5
  return c
