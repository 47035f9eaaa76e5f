r"""Evaluates a trained DAE across corruption levels: `python -m experiments.noise_sweep --workdir DIR`.

Gaussian sigma 0.25 -> 1.0 (mean as trained, or 0.5), masking and salt-and-pepper
nu 0.1 -> 0.7; MSE and PSNR of corrupted input and denoised output vs the clean
test images. Writes DIR/sweep.json, DIR/sweep.md and DIR/sweep_<kind>.png (rows:
clean, then corrupted / denoised per level).
"""

import functools
import os

from absl import app, flags
import jax
import ml_collections
import numpy as np

from ae_jax import data, metrics, noise, objectives, plots, probes, train

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by experiments.train.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Override the run's data.dir (moved files).")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 8, "Examples drawn per row in the figures.")

LEVELS = {"gaussian": (0.25, 0.5, 0.75, 1.0), "masking": (0.1, 0.3, 0.5, 0.7),
          "salt_and_pepper": (0.1, 0.3, 0.5, 0.7)}


def noise_config(kind: str, level: float, trained_noise) -> ml_collections.ConfigDict:
  mean = trained_noise.mean if trained_noise.kind == "gaussian" else 0.5
  return ml_collections.ConfigDict(dict(kind=kind, mean=mean, std=level, clip=True, nu=level))


def run(workdir: str, data_dir: str | None = None, num_images: int = 8) -> list[dict]:
  trained = probes.load(workdir)
  cfg = trained.config
  if data_dir is not None:
    cfg.data.dir = data_dir
  ds = data.load(cfg.data)
  eval_key = train.run_keys(cfg.seed)["eval"]
  shown = np.linspace(0, len(ds.test_x) - 1, num_images).astype(np.int32)
  objective = objectives.from_config(cfg, trained.model.apply)
  rows = []
  for kind, levels in LEVELS.items():
    figure, labels = [ds.test_x[shown]], ["clean"]
    for level in levels:
      ncfg = noise_config(kind, level, cfg.noise)
      eval_fn = jax.jit(functools.partial(train.eval_step, objective=objective,
                                          corrupt=noise.corruption_fn(ncfg)))
      result = train.evaluate(eval_fn, trained.params, ds.test_x, eval_key, cfg.eval_batch_size)
      param = "sigma" if kind == "gaussian" else "nu"
      rows.append({"kind": kind, param: level, **{k: result[k] for k in (
          "noisy_input_mse", "noisy_input_psnr", "denoised_mse", "denoised_psnr")}})
      noisy = probes.corrupt(ncfg, eval_key, ds.test_x[shown], shown)  # the eval's own noise
      figure += [noisy, probes.reconstruct(trained.model, trained.params, noisy)]
      labels += [f"{param}={level} in", f"{param}={level} out"]
    plots.image_rows(os.path.join(workdir, f"sweep_{kind}.png"), figure, labels,
                     f"{kind}: corrupted input and denoised output per level")
  metrics.write_json(os.path.join(workdir, "sweep.json"), {"rows": rows, "data": ds.source,
                                                           "step": trained.step})
  lines = ["| corruption | level | input MSE | input PSNR (dB) | denoised MSE | denoised PSNR (dB) |",
           "| --- | --- | --- | --- | --- | --- |"]
  for r in rows:
    level = r.get("sigma", r.get("nu"))
    name = "sigma" if "sigma" in r else "nu"
    lines.append(f"| {r['kind']} | {name}={level} | {r['noisy_input_mse']:.4f} | "
                 f"{r['noisy_input_psnr']:.2f} | {r['denoised_mse']:.4f} | {r['denoised_psnr']:.2f} |")
  with open(os.path.join(workdir, "sweep.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  return rows


def main(argv):
  del argv
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  run(_WORKDIR.value, _DATA_DIR.value, _NUM_IMAGES.value)
  with open(os.path.join(_WORKDIR.value, "sweep.md")) as f:
    print(f.read())


if __name__ == "__main__":
  app.run(main)
