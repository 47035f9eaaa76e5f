"""ae_jax: convolutional and denoising autoencoders in JAX/Flax."""

from ae_jax import checkpoint, config, data, losses, metrics, models, noise, parallel, plots, train
from ae_jax.config import get_default as default_config
from ae_jax.models import Autoencoder, Decoder, Encoder
from ae_jax.train import train_and_evaluate, train_step

__all__ = [
    "Autoencoder", "Decoder", "Encoder", "checkpoint", "config", "data", "default_config",
    "losses", "metrics", "models", "noise", "parallel", "plots", "train", "train_and_evaluate",
    "train_step",
]
