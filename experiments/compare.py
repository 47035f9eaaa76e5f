r"""Trains the members of a study with one budget on one dataset and tabulates them.

  python -m experiments.compare --workdir runs/compare     # the family: eight members, 10 epochs at batch 128
  python -m experiments.compare --workdir runs/tiny --members=ae,vae \
    --config.num_epochs=1 --config.data.source=embedded    # a few minutes on 2 CPU cores
  python -m experiments.compare --study=disentanglement --workdir runs/dsprites \
    --config.data.train_size=256000 --config.num_epochs=1  # 4,000 steps a member

--study=family: the autoencoder family (configs.FAMILY) with the shared budget
(10 epochs at batch 128, the final eval). --study=disentanglement: the eight
members of the disentanglement study on dSprites (configs.DISENTANGLEMENT,
experiments/configs/dsprites.py, the study's own budget) and their
disentanglement scores. Each member is its config, then every
--config.FIELD=VALUE given here, trained in WORKDIR/<member> by
train_and_evaluate. A rerun resumes unfinished members and reads finished ones.
Writes WORKDIR/compare.json, compare.md (the table) and compare.png (per member a
row of test reconstructions and a row of samples); the disentanglement study
also WORKDIR/traversals_<member>.png, each latent dimension traversed.
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

# study -> (member -> its config in experiments/configs/, "module" or "module:argument"; what every
# member gets before the command line's --config overrides)
STUDIES = {"family": (configs.FAMILY, {"num_epochs": 10, "batch_size": 128, "eval.final": True}),
           "disentanglement": (configs.DISENTANGLEMENT, {"eval.final": True})}

_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the members' workdirs and the table.")
_STUDY = flags.DEFINE_enum("study", "family", list(STUDIES), "Which members, and which table.")
_MEMBERS = flags.DEFINE_list("members", None, "Which members of the study (default: all): "
                             + "; ".join(f"{k}: {', '.join(v)}" for k, (v, _) in STUDIES.items()) + ".")
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
FAMILY_COLUMNS = (
    ("test MSE", "det_recon_mse", "{:.4f}"), ("PSNR dB", "det_recon_psnr", "{:.2f}"),
    ("SSIM", "ssim", "{:.3f}"), ("ELBO nats", "elbo", "{:.2f}"), ("IS-NLL nats", "nll", "{:.2f}"),
    ("Fréchet dist.", "frechet_distance", "{:.2f}"), ("floor", "frechet_floor", "{:.2f}"),
    ("linear probe", "linear_probe_accuracy", "{:.3f}"), ("k-NN", "knn_accuracy", "{:.3f}"),
    ("active units", "active_units", "{}"), ("img/s vs first", "speed_vs_first", "{:.2f}"),
)
FACTOR_COLUMNS = (
    ("BetaVAE score", "beta_vae_eval_accuracy", "{:.3f}"), ("FactorVAE score", "factor_vae_eval_accuracy",
                                                             "{:.3f}"),
    ("MIG", "mig", "{:.3f}"), ("SAP", "sap", "{:.3f}"), ("DCI dis.", "dci_disentanglement", "{:.3f}"),
    ("DCI compl.", "dci_completeness", "{:.3f}"), ("DCI info.", "dci_informativeness", "{:.3f}"),
    ("modularity", "modularity", "{:.3f}"), ("ELBO nats", "elbo", "{:.2f}"), ("test MSE", "det_recon_mse",
                                                                             "{:.4f}"),
    ("active units", "active_units", "{}"), ("img/s", "images_per_sec", "{:.0f}"),
)


def member_config(member: str, overrides: dict, study: str = "family"):
  """The member's config with the study's budget, then the command line's overrides."""
  members, budget = STUDIES[study]
  if member not in members:
    raise ValueError(f"--members: {member!r}: expected some of {', '.join(members)} (--study={study})"
                     f"{config_lib.suggest(member, members)}")
  module, *arg = members[member].split(":", 1)
  c = cli.with_plugins(importlib.import_module(f"experiments.configs.{module}").get_config(*arg))
  for name, value in {**budget, **overrides}.items():
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
  compilation cache holds it already; a streamed split (dSprites' 727,280 drawn images)
  puts only 8 batches on the device."""
  device = parallel.select_devices(1, "jit")
  runs = {}
  for member, cfg in configs.items():
    place = parallel.placement("jit", device, cfg.batch_size)
    model = train.build_model(cfg, ds.image_shape)
    step = place.compile(train.bind_steps(cfg, model).train)
    rows = slice(None) if isinstance(ds.train, data.ArraySource) else slice(0, 8 * cfg.batch_size)
    table = place.put_table({"image": ds.train[rows]})
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


def markdown(results: dict, budget: str, study: str = "family") -> str:
  columns = FAMILY_COLUMNS if study == "family" else FACTOR_COLUMNS
  title = "Autoencoder family" if study == "family" else "Disentanglement study"
  rows = [f"{title}, {budget}.", "",
          "| model | objective | " + " | ".join(c for c, _, _ in columns) + " |",
          "| --- | --- |" + " --- |" * len(columns)]
  for member, r in results.items():
    cells = [fmt.format(r[key]) if r.get(key) is not None else "-" for _, key, fmt in columns]
    rows.append(f"| {member} | {r['objective']} | " + " | ".join(cells) + " |")
  if study != "family":
    return "\n".join(rows + ["", FACTOR_NOTE]) + "\n"
  rows += ["", "test MSE, PSNR, SSIM: the deterministic reconstruction decode(encode(x)) of the clean "
           "test images (the posterior mean for the VAE family). ELBO and IS-NLL (importance-sampled "
           "-log p(x)): on the binarised test set, for members trained on binarised data. "
           "Fréchet distance: decoded samples vs the test images in the features of the project's own "
           "MNIST classifier (ae_jax/frechet.py); samples from the prior (VAE family) or from a mixture "
           "fitted to the training latents; floor: training vs test images. Probes: on the latents. "
           "img/s vs first: training throughput of the train step relative to the first member's, timed "
           "side by side in this process (interleaved rounds, median)."]
  return "\n".join(rows) + "\n"


FACTOR_NOTE = (
    "Scores of the posterior means, on images drawn for sampled factors (ae_jax/disentanglement.py, "
    "disentanglement_lib's definitions): BetaVAE and FactorVAE scores are eval accuracies; MIG, SAP, DCI "
    "(disentanglement, completeness, informativeness: the trees' test accuracy) and modularity; the points "
    "per score are in compare.json (factor_points, factor_eval_points). ELBO: nats on the test split "
    "(the beta = 1 bound, whatever the member's objective). img/s: training images/s of each member's "
    "train step, timed side by side in this process (interleaved rounds, median).")


TRAVERSAL_SIGMAS = tuple(np.linspace(-2.0, 2.0, 9))


def traversals(path: str, model, params, ds: data.Dataset, member: str, sigmas=TRAVERSAL_SIGMAS) -> None:
  """Each latent dimension of one test image's posterior mean swept over sigmas (prior units), a row per
  dimension, labelled with its mean KL over 1,000 test images (an unused dimension has ~0)."""
  x = transforms.to_float(ds.test[:1000])
  mean, logvar = jax.jit(lambda p, v: model.apply({"params": p}, v, method="posterior"))(params, x)
  kl_D = np.mean(0.5 * (np.square(mean) + np.exp(logvar) - 1.0 - logvar), axis=0)
  rows = probes.traverse(model, params, x[0], sigmas=tuple(sigmas))
  plots.image_rows(path, list(rows), [f"z{d}: KL {kl_D[d]:.2f}" for d in range(len(rows))],
                   f"{member}: latent traversals of one test image, each dimension from {sigmas[0]:g} to "
                   f"{sigmas[-1]:g} prior std")


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
  study = _STUDY.value
  members = _MEMBERS.value or list(STUDIES[study][0])
  configs = {m: member_config(m, overrides, study) for m in members}  # every member checked before any work
  cli.start_process()
  workdir = _WORKDIR.value
  results, trained, ds = {}, {}, None
  for member, cfg in configs.items():
    train.report("--- %s (%s) ---", member, STUDIES[study][0][member])
    result = train.train_and_evaluate(cfg, os.path.join(workdir, member))
    loaded = probes.load(os.path.join(workdir, member))
    trained[member] = (loaded.model, loaded.params, cfg)
    results[member] = {"objective": cfg.objective, "config": STUDIES[study][0][member], **result}
    ds = ds or data.load(cfg.data)
    if study == "disentanglement":
      traversals(os.path.join(workdir, f"traversals_{member}.png"), loaded.model, loaded.params, ds, member)
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
    f.write(markdown(results, budget, study))
  figure(os.path.join(workdir, "compare.png"), trained, ds)
  print(markdown(results, budget, study))


if __name__ == "__main__":
  cli.run(main)
