r"""Convolutional VAE on dynamically binarised MNIST: latent 20, Bernoulli likelihood, batch 128,
Adam 1e-3, 10 epochs (the setting of the Flax `examples/vae`, with the reference's conv encoder
and decoder instead of its MLP).

  python -m experiments.train --config experiments/configs/vae_mnist.py --workdir runs/vae_mnist \
    --config.data.source=idx --config.data.dir=~/data/mnist
"""

from ae_jax import config as config_lib


def get_config():
  c = config_lib.get_default()
  c.objective = "vae"
  c.vae.likelihood = "bernoulli"
  c.data.binarize = "dynamic"
  c.model.latent_dim = 20
  c.batch_size = 128
  c.num_epochs = 10
  c.eval.final = True
  return c
