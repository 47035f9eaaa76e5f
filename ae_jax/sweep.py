"""A trained denoising autoencoder across corruption levels: what `python -m experiments.noise_sweep` writes.

Gaussian sigma 0.25 -> 1.0 (mean as trained, or 0.5), masking and salt-and-pepper
nu 0.1 -> 0.7; MSE and PSNR of corrupted input and denoised output vs the clean
test images, with the run's fixed eval key (so the trained level reproduces the
run's own eval numbers).
"""

import functools
import os

import jax
import numpy as np

from ae_jax import data, losses, metrics, objectives, plots, probes, train
from ae_jax.data import transforms

LEVELS = {"gaussian": (0.25, 0.5, 0.75, 1.0), "masking": (0.1, 0.3, 0.5, 0.7),
          "salt_and_pepper": (0.1, 0.3, 0.5, 0.7)}


def corruption(kind: str, level, trained_noise):
  """The per-example corruption of `kind` at `level` (sigma or nu), which may be traced."""
  if kind == "gaussian":
    mean = trained_noise.mean if trained_noise.kind == "gaussian" else 0.5
    return functools.partial(transforms.gaussian, mean=mean, std=level, clip=True)
  fn = {"masking": transforms.masking, "salt_and_pepper": transforms.salt_and_pepper}[kind]
  return functools.partial(fn, nu=level)


def _eval_at_level(params, batch, key, level, *, kind, objective, trained_noise):
  return train.eval_step(params, batch, key, objective=objective,
                         corrupt=corruption(kind, level, trained_noise))


def _corrupt_at_level(key, x_BHWC, index_B, level, *, kind, trained_noise):
  return transforms.corrupt_batch(corruption(kind, level, trained_noise), key, x_BHWC, index_B)


def noise_sweep(workdir: str, data_dir: str | None = None, num_images: int = 8) -> list[dict]:
  """Evaluates a trained run at every level of LEVELS with its fixed eval key; writes
  WORKDIR/sweep.json, sweep.md and sweep_<kind>.png. Returns the rows."""
  trained = probes.load(workdir)
  cfg = trained.config
  if data_dir is not None:
    cfg.data.dir = data_dir
  ds = data.load(cfg.data)
  eval_key = train.run_keys(cfg.seed)["eval"]
  shown = np.linspace(0, len(ds.test) - 1, num_images).astype(np.int32)
  clean_x = transforms.to_float(ds.test[shown])
  objective = objectives.bind(cfg, trained.model.apply)
  rows = []
  for kind, levels in LEVELS.items():
    # The level is a traced argument: one compilation per kind, not per level.
    eval_fn = jax.jit(functools.partial(_eval_at_level, kind=kind, objective=objective,
                                        trained_noise=cfg.noise))
    corrupt_fn = jax.jit(functools.partial(_corrupt_at_level, kind=kind, trained_noise=cfg.noise))
    figure, labels = [clean_x], ["clean"]
    for level in levels:
      at_level = functools.partial(eval_fn, level=np.float32(level))
      result = train.evaluate(at_level, trained.params, ds.test, eval_key, cfg.eval_batch_size)
      param = "sigma" if kind == "gaussian" else "nu"
      trained_here = cfg.noise.kind == kind and np.isclose(
          level, cfg.noise.std if kind == "gaussian" else cfg.noise.nu)
      rows.append({"kind": kind, param: level, "trained_level": bool(trained_here), **{k: result[k] for k in (
          "corruption_mse", "corruption_psnr", "recon_mse", "recon_psnr", "recon_from_clean_mse")}})
      noisy = np.asarray(corrupt_fn(eval_key, clean_x, shown, np.float32(level)))  # eval noise
      figure += [noisy, probes.reconstruct(trained.model, trained.params, noisy)]
      labels += [f"{param}={level} in", f"{param}={level} out"]
    plots.image_rows(os.path.join(workdir, f"sweep_{kind}.png"), figure, labels,
                     f"{kind}: corrupted input and denoised output per level")
  metrics.write_json(os.path.join(workdir, "sweep.json"), {"rows": rows, "data": ds.source,
                                                           "step": trained.step})
  clean = rows[0]["recon_from_clean_mse"]  # the model fed clean images: the floor denoising aims at
  lines = [f"Clean-input reconstruction MSE (baseline): {clean:.4f} ({float(losses.psnr(clean)):.2f} dB). "
           "* marks the corruption and level the model was trained on.", "",
           "| corruption | level | corrupted input MSE | denoised MSE | denoised PSNR (dB) | "
           "denoised / baseline |", "| --- | --- | --- | --- | --- | --- |"]
  for r in rows:
    name = "sigma" if "sigma" in r else "nu"
    mark = " *" if r["trained_level"] else ""
    lines.append(f"| {r['kind']} | {name}={r[name]}{mark} | {r['corruption_mse']:.4f} | "
                 f"{r['recon_mse']:.4f} | {r['recon_psnr']:.2f} | {r['recon_mse'] / clean:.2f}x |")
  with open(os.path.join(workdir, "sweep.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  return rows
