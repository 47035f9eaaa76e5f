r"""Evaluates a trained DAE across corruption levels: `python -m experiments.noise_sweep --workdir DIR`.

Gaussian sigma 0.25 -> 1.0 (mean as trained, or 0.5), masking and salt-and-pepper
nu 0.1 -> 0.7; MSE and PSNR of corrupted input and denoised output vs the clean
test images. Writes DIR/sweep.json, DIR/sweep.md and DIR/sweep_<kind>.png (rows:
clean, then corrupted / denoised per level). The work is ae_jax.sweep.noise_sweep.
"""

import os

from absl import flags

from ae_jax import sweep
from experiments import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by experiments.train.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Override the run's data.dir (moved files).")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 8, "Examples drawn per row in the figures.")


def main(argv):
  workdir = cli.start_tool(argv, _WORKDIR.value)
  sweep.noise_sweep(workdir, _DATA_DIR.value, _NUM_IMAGES.value)
  with open(os.path.join(workdir, "sweep.md")) as f:
    print(f.read())


if __name__ == "__main__":
  cli.run(main)
