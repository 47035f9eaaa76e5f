r"""Every objective for a few steps through a small residual model at 256x256x3 (or --size).

  python -m tools.large_images --size=256

Four generated pictures (ae_jax.data.shapes), model.name='resnet' at widths 8-16-32-32, one block a
level, a 4-channel latent grid (f 8); vae and iwae with the discretized Gaussian and its EMA scale,
contractive with contractive.probes=2 (its exact Jacobian would not fit). Prints each objective's
losses over --steps steps of the bound train step.
"""

import time

from absl import app, flags
import jax
import numpy as np

from ae_jax import config as config_lib
from ae_jax import objectives, train
from ae_jax.data import shapes

FLAGS = flags.FLAGS
flags.DEFINE_integer("size", 256, "Image height and width.")
flags.DEFINE_integer("steps", 3, "Train steps per objective.")


def main(argv):
  del argv
  x = shapes.render_many(4, FLAGS.size, seed=0)[0]
  for name in sorted(objectives.REGISTRY):
    c = config_lib.get_default()
    c.objective, c.data.binarize = name, "none"
    c.model.update(name="resnet", channels=8, channel_mult=(1, 2, 4, 4), num_res_blocks=1, norm_groups=8,
                   latent_grid=True, latent_dim=4)
    if name == "contractive":
      c.contractive.probes = 2
    if name in ("vae", "iwae"):
      c.vae.likelihood, c.vae.scale_fit = "discretized_gaussian", "ema"
    model = train.build_model(c, (FLAGS.size, FLAGS.size, 3))
    state = train.create_train_state(model, c, jax.random.key(0))
    step = jax.jit(train.bind_steps(c, model).train)
    t, losses = time.perf_counter(), []
    for _ in range(FLAGS.steps):
      state, m = step(state, {"image": x}, jax.random.key(1))
      losses.append(float(m["loss"]))
    finite = bool(np.all(np.isfinite(losses)))
    print(f"{name}: losses {', '.join(f'{v:.4g}' for v in losses)}, finite {finite} "
          f"({time.perf_counter() - t:.0f} s)", flush=True)


if __name__ == "__main__":
  app.run(main)
