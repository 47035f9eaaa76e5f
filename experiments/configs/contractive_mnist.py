r"""Contractive AE (Rifai et al. 2011): the reference AE plus weight * ||dz/dx||_F^2, batch 128, 10 epochs.

conv_impl='matmul': the penalty's gradient differentiates the encoder twice, and XLA:CPU runs
that fastest with the im2col convs (train step at batch 128 on 2 cores, 2026-11-25:
subpixel 917 ms, xla 1,129 ms, matmul 342 ms).
"""

from experiments.configs import ae_mnist


def get_config():
  c = ae_mnist.get_config()
  c.objective = "contractive"
  c.contractive.weight = 1e-4
  c.model.conv_impl = "matmul"
  c.batch_size = 128
  c.num_epochs = 10
  c.eval.final = True
  return c
