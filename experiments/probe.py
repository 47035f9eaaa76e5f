r"""Probes a trained run's latent space: `python -m experiments.probe --workdir DIR`.

Writes DIR/probes.json (linear-probe and k-NN accuracy on latents and on pixels)
and pictures: latent_pca.png, latent_tsne.png, manifold.png (2-D latents only),
interpolation.png, training_curves.png.
"""

from absl import flags

from ae_jax import probes
from experiments import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by experiments.train.")
_MAX_TRAIN = flags.DEFINE_integer("max_train", 10_000, "Train examples used to fit the probes.")
_TSNE_POINTS = flags.DEFINE_integer("tsne_points", 2000, "Test points in the t-SNE picture.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Override the run's data.dir (moved files).")


def main(argv):
  workdir = cli.start_tool(argv, _WORKDIR.value)
  report = probes.probe_run(workdir, _MAX_TRAIN.value, _TSNE_POINTS.value, _DATA_DIR.value)
  for k, v in report.items():
    print(f"{k}: {v}")


if __name__ == "__main__":
  cli.run(main)
