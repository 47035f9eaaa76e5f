"""Run configs (`get_config()` files), and FAMILY: the members `python -m experiments.compare` trains."""

# member -> its config module here, in the order of the comparison table (the first is the speed baseline).
FAMILY = {"ae": "ae_mnist", "dae": "dae_mnist", "vae": "vae_mnist", "beta_vae": "beta_vae_mnist",
          "iwae": "iwae_mnist", "sparse": "sparse_mnist", "contractive": "contractive_mnist",
          "vqvae": "vqvae_mnist"}
