"""What the train step minimises: objectives by name (`config.objective`), one `Objective` record each.

REGISTRY maps names to records; `register(name, Objective(...))` adds your own
from your code (docs/extending.md), and it then gets everything a built-in one
gets: its config fields with their checks and `--help`, run.json, its metrics
in the progress line, every parallel wrapper, resume and the final eval.
"""

import ml_collections

from ae_jax import fields
from ae_jax.models import Head
from ae_jax.objectives import disentangling, factor_vae, reconstruction, vae, vq
from ae_jax.objectives.objective import Objective, dense_head, global_batch, per_example_keys

DEFAULT = "ae"  # the Keras reference autoencoder
REGISTRY: dict[str, Objective] = {
    "ae": reconstruction.AE, "vae": vae.VAE, "iwae": vae.IWAE, "sparse": reconstruction.SPARSE,
    "contractive": reconstruction.CONTRACTIVE, "vqvae": vq.VQVAE, "beta_tcvae": disentangling.BETA_TCVAE,
    "factor_vae": factor_vae.FACTOR_VAE, "dip_vae": disentangling.DIP_VAE,
    "annealed_vae": disentangling.ANNEALED_VAE,
}


def register(name: str, objective: Objective) -> Objective:
  """Adds an objective under `name` (`config.objective=name`); its fields join the config."""
  return fields.register(REGISTRY, name, objective, "objective")


def get(name: str) -> Objective:
  return fields.lookup(REGISTRY, name, "objective")


def bind(config: ml_collections.ConfigDict, apply_fn):
  """The objective `config.objective` names, bound to the model's apply_fn and its config fields."""
  return get(config.objective).bind(config, apply_fn)


def head(config: ml_collections.ConfigDict) -> Head:
  """The latent head `config.objective` needs from the model."""
  return get(config.objective).head(config)


def check(config: ml_collections.ConfigDict) -> None:
  """The objective's own check of field combinations (each field's check has run already)."""
  objective = get(config.objective)
  if objective.check is not None:
    objective.check(config)


__all__ = ["DEFAULT", "Objective", "REGISTRY", "bind", "check", "dense_head", "disentangling", "factor_vae",
           "get", "global_batch", "head", "per_example_keys", "reconstruction", "register", "vae", "vq"]
