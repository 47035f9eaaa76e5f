"""ae_jax: autoencoders in JAX/Flax, with a plug point for objectives, models and data sources."""

from ae_jax import checkpoint, config, data, losses, metrics, models, objectives, parallel, plots, train
from ae_jax.config import get_default as default_config
from ae_jax.train import train_and_evaluate, train_step

__all__ = [
    "checkpoint", "config", "data", "default_config", "losses", "metrics", "models", "objectives",
    "parallel", "plots", "train", "train_and_evaluate", "train_step",
]
