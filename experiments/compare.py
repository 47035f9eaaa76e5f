r"""Trains members of the autoencoder family with one budget on one dataset and tabulates them.

  python -m experiments.compare --workdir runs/compare     # all eight members, 10 epochs at batch 128
  python -m experiments.compare --workdir runs/tiny --members=ae,vae \
    --config.num_epochs=1 --config.data.source=embedded    # a few minutes on 2 CPU cores

Each member is its config in experiments/configs/ (MEMBERS) with the shared
budget (BUDGET: 10 epochs at batch 128, the final eval) and then every
--config.FIELD=VALUE given here, trained in WORKDIR/<member> by
train_and_evaluate. A rerun resumes unfinished members and reads finished ones.
Writes WORKDIR/compare.json, compare.md (the table) and compare.png (per member a
row of test reconstructions and a row of samples).
"""

import importlib
import os
import time

from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

from ae_jax import config as config_lib
from ae_jax import data, metrics, parallel, plots, probes, train
from ae_jax.data import transforms
from experiments import cli, configs

MEMBERS = configs.FAMILY  # member -> its config module in experiments/configs/
# What every member gets before the command line's --config overrides.
BUDGET = {"num_epochs": 10, "batch_size": 128, "eval.final": True}

_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the members' workdirs and the table.")
_MEMBERS = flags.DEFINE_list("members", list(MEMBERS), f"Which members, of {', '.join(MEMBERS)}.")
_SPEED_STEPS = flags.DEFINE_integer("speed_steps", 10, "Timed train steps per member and round.",
                                    lower_bound=1)
_SPEED_ROUNDS = flags.DEFINE_integer("speed_rounds", 3, "Rounds of the side-by-side speed measurement.",
                                     lower_bound=1)
_CONFIG = config_flags.DEFINE_config_dict(
    "config", config_lib.get_default(),
    "Overrides for every member, --config.FIELD=VALUE (the fields: below, and docs/config.md).")
flags.FLAGS["config"].default_as_str = None  # --help lists the fields below, not the whole default config
cli.define_plugins_flag()
cli.define_process_flags()

# (column, eval.json key, format); '-' where a member does not define it.
COLUMNS = (
    ("test MSE", "det_recon_mse", "{:.4f}"), ("PSNR dB", "det_recon_psnr", "{:.2f}"),
    ("SSIM", "ssim", "{:.3f}"), ("ELBO nats", "elbo", "{:.2f}"), ("IS-NLL nats", "nll", "{:.2f}"),
    ("Fréchet dist.", "frechet_distance", "{:.2f}"), ("floor", "frechet_floor", "{:.2f}"),
    ("linear probe", "linear_probe_accuracy", "{:.3f}"), ("k-NN", "knn_accuracy", "{:.3f}"),
    ("active units", "active_units", "{}"), ("img/s vs first", "speed_vs_first", "{:.2f}"),
)


def member_config(member: str, overrides: dict):
  """The member's config with the shared budget, then the command line's overrides."""
  if member not in MEMBERS:
    raise ValueError(f"--members: {member!r}: expected some of {', '.join(MEMBERS)}"
                     f"{config_lib.suggest(member, MEMBERS)}")
  c = cli.with_plugins(importlib.import_module(f"experiments.configs.{MEMBERS[member]}").get_config())
  for name, value in {**BUDGET, **overrides}.items():
    *parents, leaf = name.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  c.eval_batch_size = min(c.eval_batch_size, 1000)
  config_lib.validate(c)
  return c


def training_speeds(configs: dict, ds: data.Dataset, steps: int, rounds: int) -> dict:
  """Training images/s of each member's train step, measured side by side: every round times
  `steps` steps of each member in turn; the median over rounds. Interleaving keeps a noisy,
  shared machine from favouring one member. Each step is compiled as train_and_evaluate
  compiles it (one device, the images on it, batches by index), so the persistent
  compilation cache holds it already."""
  device = parallel.select_devices(1, "jit")
  runs = {}
  for member, cfg in configs.items():
    place = parallel.placement("jit", device, cfg.batch_size)
    model = train.build_model(cfg, ds.image_shape)
    step = place.compile(train.bind_steps(cfg, model).train)
    table = place.put_table({"image": ds.train[:]})
    index = place.put_batches({"index": np.arange(cfg.batch_size, dtype=np.int32)[None]})
    state = place.put_state(train.create_train_state(model, cfg, jax.random.key(0)))
    state, _ = step(state, index, jax.random.key(2), table)  # compiled, or loaded from the cache
    runs[member] = [step, state, (index, jax.random.key(2), table), []]
  for _ in range(rounds):
    for run in runs.values():
      step, state, args, times = run
      jax.block_until_ready(state)
      t = time.perf_counter()
      for _ in range(steps):
        state, _ = step(state, *args)
      jax.block_until_ready(state)
      times.append(time.perf_counter() - t)
      run[1] = state
  return {m: steps * configs[m].batch_size / float(np.median(times)) for m, (_, _, _, times) in runs.items()}


def markdown(results: dict, budget: str) -> str:
  rows = [f"Autoencoder family, {budget}.", "",
          "| model | objective | " + " | ".join(c for c, _, _ in COLUMNS) + " |",
          "| --- | --- |" + " --- |" * len(COLUMNS)]
  for member, r in results.items():
    cells = [fmt.format(r[key]) if r.get(key) is not None else "-" for _, key, fmt in COLUMNS]
    rows.append(f"| {member} | {r['objective']} | " + " | ".join(cells) + " |")
  rows += ["", "test MSE, PSNR, SSIM: the deterministic reconstruction decode(encode(x)) of the clean "
           "test images (the posterior mean for the VAE family). ELBO and IS-NLL (importance-sampled "
           "-log p(x)): on the binarised test set, for members trained on binarised data. "
           "Fréchet distance: decoded samples vs the test images in the features of the project's own "
           "MNIST classifier (ae_jax/frechet.py); samples from the prior (VAE family) or from a mixture "
           "fitted to the training latents; floor: training vs test images. Probes: on the latents. "
           "img/s vs first: training throughput of the train step relative to the first member's, timed "
           "side by side in this process (interleaved rounds, median)."]
  return "\n".join(rows) + "\n"


def figure(path: str, trained: dict, ds: data.Dataset, n: int = 8) -> None:
  """A row per member: its reconstructions of n test digits (the first row), a gap, n samples."""
  index = np.linspace(0, len(ds.test) - 1, n).astype(np.int32)
  x = transforms.to_float(ds.test[index])
  gap = np.full((1, *x.shape[1:]), np.nan, np.float32)  # drawn blank
  rows, labels = [x], ["test digits"]
  for member, (model, params, cfg) in trained.items():
    z = None if model.latent == "gaussian" else probes.embed(model, params, ds.train[:10_000])
    drawn, _ = probes.sample(model, params, n, cfg.seed, train_z=z, components=cfg.eval.gmm_components)
    rows.append(np.concatenate([probes.reconstruct(model, params, x), gap, drawn]))
    labels.append(member)
  plots.image_rows(path, rows, labels,
                   f"left: reconstructions of the {n} test digits on top; right: {n} decoded samples")


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _WORKDIR.value:
    cli.fail("--workdir is required")
  overrides = config_flags.get_override_values(flags.FLAGS["config"])
  configs = {m: member_config(m, overrides) for m in _MEMBERS.value}  # every member checked before any work
  cli.start_process()
  workdir = _WORKDIR.value
  results, trained, ds = {}, {}, None
  for member, cfg in configs.items():
    train.report("--- %s (%s) ---", member, MEMBERS[member])
    result = train.train_and_evaluate(cfg, os.path.join(workdir, member))
    loaded = probes.load(os.path.join(workdir, member))
    trained[member] = (loaded.model, loaded.params, cfg)
    results[member] = {"objective": cfg.objective, "config": MEMBERS[member], **result}
    ds = ds or data.load(cfg.data)
  train.report("timing the members' train steps side by side (%d rounds of %d steps)",
               _SPEED_ROUNDS.value, _SPEED_STEPS.value)
  speeds = training_speeds(configs, ds, _SPEED_STEPS.value, _SPEED_ROUNDS.value)
  for member, r in results.items():
    r["images_per_sec"] = speeds[member]
    r["speed_vs_first"] = speeds[member] / speeds[next(iter(speeds))]
  first = next(iter(configs.values()))
  budget = (f"{first.num_epochs} epochs at batch {first.batch_size}, {ds.source}: {len(ds.train)} train / "
            f"{len(ds.test)} test, seed {first.seed}")
  metrics.write_json(os.path.join(workdir, "compare.json"),
                     {"budget": budget, "overrides": overrides, "members": results})
  with open(os.path.join(workdir, "compare.md"), "w") as f:
    f.write(markdown(results, budget))
  figure(os.path.join(workdir, "compare.png"), trained, ds)
  print(markdown(results, budget))


if __name__ == "__main__":
  cli.run(main)
