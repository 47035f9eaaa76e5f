"""Developer tools (`python -m tools.<name>`): benchmarks, profiles, the fault drill. Not user commands."""

import statistics
import time


def matmul_gflops(n: int = 2048) -> float:
  """Median float32 GFLOP/s of one jitted n x n matmul on the default device."""
  import jax  # only here: importing experiments must not start JAX
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  mm = jax.jit(lambda a, b: a @ b)
  mm(a, a).block_until_ready()
  rates = []
  for _ in range(5):
    t = time.perf_counter()
    mm(a, a).block_until_ready()
    rates.append(2 * n**3 / (time.perf_counter() - t) / 1e9)
  return statistics.median(rates)


def reference_model(**model_fields):
  """The reference AE on MNIST-sized images, with model fields overridden."""
  from ae_jax import config as config_lib
  from ae_jax import train
  cfg = config_lib.get_default()
  cfg.model.update(model_fields)
  return train.build_model(cfg, (28, 28, 1))
