r"""Sparse AE: the reference AE plus an L1 penalty on the latent activations, batch 128, 10 epochs."""

from experiments.configs import ae_mnist


def get_config():
  c = ae_mnist.get_config()
  c.objective = "sparse"
  c.sparse.penalty = "l1"
  c.sparse.weight = 1e-4
  c.batch_size = 128
  c.num_epochs = 10
  c.eval.final = True
  return c
