"""What the train step minimises: objectives by name (`config.objective`), one `Objective` record each.

REGISTRY maps names to records; `register(name, Objective(...))` adds your own
from your code (docs/extending.md), and it then gets everything a built-in one
gets: its config fields with their checks and `--help`, run.json, its metrics
in the progress line, every parallel wrapper, resume and the final eval.
"""

import ml_collections

from ae_jax import fields
from ae_jax.models import Head
from ae_jax.objectives import reconstruction, vae, vq
from ae_jax.objectives.objective import Objective, dense_head, per_example_keys

DEFAULT = "ae"  # the Keras reference autoencoder
REGISTRY: dict[str, Objective] = {
    "ae": reconstruction.AE, "vae": vae.VAE, "iwae": vae.IWAE, "sparse": reconstruction.SPARSE,
    "contractive": reconstruction.CONTRACTIVE, "vqvae": vq.VQVAE,
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


__all__ = ["DEFAULT", "Objective", "REGISTRY", "bind", "check", "dense_head", "get", "head",
           "per_example_keys", "reconstruction", "register", "vae", "vq"]
