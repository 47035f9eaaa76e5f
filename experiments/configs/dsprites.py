r"""The disentanglement study on dSprites (Locatello et al. 2019's `unsupervised_study_v1` set-up):
the beta-VAE paper's 64x64 conv net (model.name='conv64'), 10 Gaussian latents, Bernoulli
likelihood, batch 64, Adam 1e-4, ~300k steps (26 epochs of the 727,280 training images), and the
disentanglement scores in the final eval. One config per member of the study:

  python -m experiments.train --config experiments/configs/dsprites.py:factor_vae --workdir runs/factor_vae
  python -m experiments.compare --study=disentanglement --workdir runs/dsprites   # all of MEMBERS

The members and their regularisers (the middle of the study's grid for each):
beta_vae_1, beta_vae_4, beta_vae_16 (beta 1, 4, 16), annealed_vae (C to 25 nats, gamma 1000),
factor_vae (gamma 40), dip_vae_i (lambda_od 10, lambda_d 100), dip_vae_ii (lambda_od 10,
lambda_d 10), beta_tcvae (beta 6). The images are generated (data.source='dsprites'); pass
--config.data.dir=path/to/dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz for the published ones.
"""

from ae_jax import config as config_lib

STEPS = 300_000  # the study's budget; annealed_vae's capacity ramps over a third of it
MEMBERS = {
    "beta_vae_1": ("vae", {"vae.beta": 1.0}),
    "beta_vae_4": ("vae", {"vae.beta": 4.0}),
    "beta_vae_16": ("vae", {"vae.beta": 16.0}),
    "annealed_vae": ("annealed_vae", {"annealed_vae.c_max": 25.0, "annealed_vae.gamma": 1000.0,
                                      "annealed_vae.ramp_steps": 100_000}),
    "factor_vae": ("factor_vae", {"factor_vae.gamma": 40.0}),
    "dip_vae_i": ("dip_vae", {"dip_vae.kind": "i", "dip_vae.lambda_od": 10.0}),
    "dip_vae_ii": ("dip_vae", {"dip_vae.kind": "ii", "dip_vae.lambda_od": 10.0}),
    "beta_tcvae": ("beta_tcvae", {"beta_tcvae.beta": 6.0}),
}


def get_config(member: str = "beta_vae_4"):
  if member not in MEMBERS:
    raise ValueError(f"dsprites.py:{member}: expected one of {', '.join(MEMBERS)}")
  objective, fields = MEMBERS[member]
  c = config_lib.get_default()
  c.objective = objective
  c.vae.likelihood = "bernoulli"
  c.data.source = "dsprites"
  c.data.binarize = "none"  # the images are binary already
  c.model.name = "conv64"
  c.model.latent_dim = 10
  c.batch_size = 64
  c.learning_rate = 1e-4
  c.num_epochs = 26  # 26 x 727,280 / 64 = 295,451 steps
  c.eval.final = True
  for name, value in fields.items():
    section, leaf = name.split(".")
    c[section][leaf] = value
  return c
