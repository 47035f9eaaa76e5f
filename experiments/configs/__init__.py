"""Run configs (`get_config()` files), and the studies `python -m experiments.compare` trains: FAMILY
and DISENTANGLEMENT."""

# member -> its config module here, in the order of the comparison table (the first is the speed baseline).
FAMILY = {"ae": "ae_mnist", "dae": "dae_mnist", "vae": "vae_mnist", "beta_vae": "beta_vae_mnist",
          "iwae": "iwae_mnist", "sparse": "sparse_mnist", "contractive": "contractive_mnist",
          "vqvae": "vqvae_mnist"}

# member -> "module:argument" (get_config(argument)): the disentanglement study on dSprites, dsprites.py.
DISENTANGLEMENT = {m: f"dsprites:{m}" for m in ("beta_vae_1", "beta_vae_4", "beta_vae_16", "annealed_vae",
                                               "factor_vae", "dip_vae_i", "dip_vae_ii", "beta_tcvae")}
