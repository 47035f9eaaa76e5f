r"""Probes a trained run's latent space: `python -m experiments.probe --workdir DIR`.

Writes DIR/probes.json (linear-probe and k-NN accuracy on latents and on pixels)
and pictures: latent_pca.png, latent_tsne.png, manifold.png (2-D latents only),
interpolation.png, training_curves.png.
"""

import os

from absl import flags
import numpy as np

from ae_jax import data, metrics, plots, probes
from ae_jax.data import transforms
from experiments import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by experiments.train.")
_MAX_TRAIN = flags.DEFINE_integer("max_train", 10_000, "Train examples used to fit the probes.")
_TSNE_POINTS = flags.DEFINE_integer("tsne_points", 2000, "Test points in the t-SNE picture.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Override the run's data.dir (moved files).")


def run(workdir: str, max_train: int, tsne_points: int, data_dir: str | None = None) -> dict:
  trained = probes.load(workdir)
  data_cfg = trained.config.data
  if data_dir is not None:
    data_cfg.dir = data_dir
  ds = data.load(data_cfg)
  if not ds.labelled:
    raise ValueError(f"{ds.source}: experiments.probe colours and probes latents by label, and this data "
                     "has none")
  report = probes.probe_report(trained, ds, max_train)
  test_x, test_y = transforms.to_float(ds.test[:]), ds.test.labels
  z = probes.embed(trained.model, trained.params, test_x)
  pictures = {}

  def out(name):
    pictures[name] = os.path.join(workdir, name)
    return pictures[name]

  if z.shape[1] == 2:
    plots.latent_scatter(out("latent_scatter.png"), z, test_y, "test latents (2-D)")
    lo, hi = np.percentile(z, 1, axis=0), np.percentile(z, 99, axis=0)
    grid = probes.latent_grid(trained.model, trained.params, ((lo[0], hi[0]), (lo[1], hi[1])))
    plots.image_grid(out("manifold.png"), grid, "decoded 2-D latent grid (1st-99th percentile)",
                     extent=(lo[0], hi[0], lo[1], hi[1]))
  else:
    plots.latent_scatter(out("latent_pca.png"), probes.pca_2d(z), test_y,
                         f"test latents ({z.shape[1]}-D), first two principal components",
                         ("PC 1", "PC 2"))
  n = min(tsne_points, len(z))
  plots.latent_scatter(out("latent_tsne.png"), probes.tsne_2d(z[:n]), test_y[:n],
                       f"t-SNE of {n} test latents", ("t-SNE 1", "t-SNE 2"))

  # Interpolate between the first test examples of labels (0, 1), (2, 3), ... where present.
  rows, labels = [], []
  first = {int(c): int(np.flatnonzero(test_y == c)[0]) for c in np.unique(test_y)}
  pairs = [(a, a + 1) for a in range(0, 10, 2) if a in first and a + 1 in first][:4]
  for a, b in pairs:
    for method in ("linear", "slerp"):
      rows.append(probes.interpolate(trained.model, trained.params, test_x[first[a]],
                                     test_x[first[b]], steps=10, method=method))
      labels.append(f"{method} {a}->{b}")
  if rows:
    plots.image_rows(out("interpolation.png"), rows, labels, "latent interpolation")
  records = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  if records:
    plots.training_curves(out("training_curves.png"), records)
  report["pictures"] = sorted(pictures)
  metrics.write_json(os.path.join(workdir, "probes.json"), report)
  return report


def main(argv):
  workdir = cli.start_tool(argv, _WORKDIR.value)
  report = run(workdir, _MAX_TRAIN.value, _TSNE_POINTS.value, _DATA_DIR.value)
  for k, v in report.items():
    print(f"{k}: {v}")


if __name__ == "__main__":
  cli.run(main)
