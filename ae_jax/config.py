"""The run configuration: every field declared once, where it is used.

The fields of training itself are declared here (CORE, EVAL); each objective,
architecture and data source declares its own in its record, and `all_fields()`
gathers them. `get_default()`, `validate()`, the resume rules
(`resume_conflicts`), `--help` and docs/config.md (`markdown_table()`, kept
equal by a test) all come from that one list. Config files state only what
differs from the defaults.
"""

from collections.abc import Iterator, Sequence
import hashlib
import importlib
import importlib.util
import os
import sys

import ml_collections

from ae_jax import data, models, objectives, parallel
from ae_jax.data import transforms
from ae_jax.fields import (
    ALLOW,
    BOOL,
    FREE,
    NEVER,
    NON_NEGATIVE,
    NON_NEGATIVE_NUMBER,
    OPEN_FRACTION,
    POSITIVE,
    POSITIVE_NUMBER,
    TEXTS,
    Check,
    Field,
    closest,
    one_of,
    one_of_keys,
    optional,
    suggest,
)

OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "warmup_cosine")

CORE = (
    Field("seed", 0, NON_NEGATIVE, ALLOW, "root of every key: init, data order, noise, eval"),
    Field("objective", objectives.DEFAULT, one_of_keys(objectives.REGISTRY, "one"), ALLOW,
          "what the step minimises (docs/objectives.md), or one you registered"),
    Field("plugins", (), TEXTS, FREE,
          "modules or .py files imported before the config is checked: they register your objectives, "
          "models and data sources (docs/extending.md)"),
    Field("batch_size", 32, POSITIVE, ALLOW, "global batch, split across devices"),
    Field("num_epochs", 1, POSITIVE, FREE, "a rerun with more extends a finished run"),
    Field("optimizer", "adam", one_of(*OPTIMIZERS), NEVER, "optax optimizer"),
    Field("learning_rate", 1e-3, POSITIVE_NUMBER, ALLOW, "the (peak) learning rate"),
    Field("lr_schedule", "constant", one_of(*LR_SCHEDULES), NEVER,
          "`warmup_cosine`: linear warm-up from 0 over warmup_steps, then cosine to 0 at the last step"),
    Field("warmup_steps", 0, NON_NEGATIVE, ALLOW, "warm-up steps of lr_schedule=warmup_cosine"),
    Field("weight_decay", None, optional(NON_NEGATIVE_NUMBER), ALLOW,
          "adamw's decoupled weight decay (None: optax's 1e-4); other optimizers take none", float),
    Field("grad_clip_norm", None, optional(POSITIVE_NUMBER), NEVER,
          "clip gradients to this global L2 norm (optax.clip_by_global_norm); None: no clipping", float),
    Field("ema_decay", None, optional(OPEN_FRACTION), NEVER,
          "keep an EMA of the params (in the optimizer state) and evaluate it; None: off", float),
    Field("parallel", "jit", one_of(*parallel.MODES), FREE,
          "`jit`: 1 device; `pmap` or `mesh`: data parallel over num_devices"),
    Field("num_devices", None, optional(POSITIVE), FREE, "None: all local devices", int),
    Field("steps_per_call", None, optional(POSITIVE), FREE,
          "train steps per compiled call (a lax.scan); None: per backend (train.AUTO_STEPS_PER_CALL)",
          int),
    Field("data_on_device", None, optional(BOOL), FREE,
          "True: training images on the devices once, batches gathered by index; False: read from the "
          "host for each call (streamed from disk); None: True for an in-memory split up to 4 GiB and a "
          "quarter of a device's memory", bool),
    Field("eval_batch_size", 1000, POSITIVE, FREE, "examples per eval call"),
    Field("log_every_steps", 100, POSITIVE, FREE, "progress line and metrics.jsonl record cadence"),
    Field("checkpoint_every_steps", 1000, POSITIVE, FREE, "also at every epoch end and the last step"),
    Field("keep_checkpoints", 3, POSITIVE, FREE, "how many of the latest checkpoints are kept"),
    Field("num_images", 8, POSITIVE, FREE, "examples drawn in reconstructions.png / denoising.png"),
)
EVAL = (
    Field("eval.final", False, BOOL, FREE,
          "at the last step also: SSIM, active units, IS-NLL, codebook use, Frechet distance of samples, "
          "probe accuracies (ae_jax/evaluation.py)"),
    Field("eval.final_examples", 10000, optional(POSITIVE), FREE,
          "final eval: the first this many test examples (held in memory together); None: all", int),
    Field("eval.nll_samples", 200, POSITIVE, FREE, "final eval: importance samples of the NLL estimate"),
    Field("eval.nll_examples", None, optional(POSITIVE), FREE,
          "final eval: test examples of the NLL estimate; None: all of eval.final_examples", int),
    Field("eval.num_samples", 10000, POSITIVE, FREE, "final eval: generated images for the Frechet distance"),
    Field("eval.gmm_components", 10, POSITIVE, FREE,
          "final eval: mixture fitted to deterministic models' training latents, to sample from"),
    Field("eval.factor_metrics", True, BOOL, FREE,
          "final eval, for a source with known factors (dsprites): BetaVAE and FactorVAE scores, MIG, SAP, "
          "DCI, modularity of the posterior means (ae_jax/disentanglement.py)"),
    Field("eval.factor_points", 10000, POSITIVE, FREE,
          "factor metrics: the sampled points of MIG and modularity, the training points of SAP, DCI and the "
          "BetaVAE score, the FactorVAE score's points for the variances and its training votes"),
    Field("eval.factor_eval_points", 5000, POSITIVE, FREE,
          "factor metrics: the test points of SAP, DCI, the BetaVAE score and the FactorVAE score's votes"),
    Field("eval.factor_batch", 64, POSITIVE, FREE,
          "factor metrics: the examples per point of the BetaVAE and FactorVAE scores"),
    Field("eval.collapse", "warn", one_of("warn", "error"), FREE,
          "a model whose reconstructions stop depending on the input (evaluation.health): `warn` says so "
          "in one line and in eval.json; `error` also stops the run (exit 3)"),
)


def _groups(builtin_only: bool) -> Iterator[tuple[Field, ...]]:
  yield CORE
  yield models.FIELDS
  for registry in (models.ARCHITECTURES, objectives.REGISTRY):
    for record in registry.values():
      if not builtin_only or record.module.startswith("ae_jax."):
        yield record.fields
  yield transforms.FIELDS
  yield data.FIELDS
  for record in data.SOURCES.values():
    if not builtin_only or record.module.startswith("ae_jax."):
      yield record.fields
  yield EVAL


def all_fields(builtin_only: bool = False) -> tuple[Field, ...]:
  """Every field, each name once: training's, the models', the objectives', the data's, the eval's.

  builtin_only leaves out what plugins registered (for the generated docs).
  """
  out = {}
  for group in _groups(builtin_only):
    for f in group:
      if f.name in out and out[f.name] is not f:
        raise ValueError(f"config field {f.name!r} is declared twice; declare it once and share the Field")
      out[f.name] = f
  return tuple(out.values())


def by_name() -> dict[str, Field]:
  return {f.name: f for f in all_fields()}


def import_plugins(specs: Sequence[str]) -> None:
  """Imports each module name or .py file once; what they register joins the registries (and so the config).

  A file is imported under its stem (my_objective.py as `my_objective`), unless
  another module holds that name, so run.json can name it.
  """
  for spec in specs:
    if not spec.endswith(".py"):
      try:
        importlib.import_module(spec)
      except ImportError as e:
        raise ValueError(f"plugins: {spec!r} cannot be imported ({e})") from None
      continue
    path = os.path.abspath(os.path.expanduser(spec))
    stem = os.path.splitext(os.path.basename(path))[0]
    loaded = sys.modules.get(stem)
    if loaded is not None and os.path.abspath(getattr(loaded, "__file__", "") or "") == path:
      continue
    if not os.path.isfile(path):
      raise ValueError(f"plugins: {spec!r}: no such file")
    name = stem if loaded is None else f"{stem}_{hashlib.sha256(path.encode()).hexdigest()[:8]}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
      module_spec.loader.exec_module(module)
    except BaseException:
      del sys.modules[name]
      raise


def get_default(plugins: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """The reference convolutional AE on MNIST (Keras example): latent 16, Adam 1e-3, MSE.

  plugins: modules or .py files that register objectives, models or data
  sources; imported first, so that their fields are part of the config.
  """
  import_plugins(plugins)
  c = ml_collections.ConfigDict()
  for f in all_fields():
    *parents, leaf = f.name.split(".")
    node = c
    for p in parents:
      if p not in node:
        node[p] = ml_collections.ConfigDict()
      node = node[p]
    node[leaf] = ml_collections.FieldReference(None, field_type=f.field_type) if f.default is None \
        else f.default
  c.plugins = tuple(plugins)
  return c


def from_saved(saved: dict) -> ml_collections.ConfigDict:
  """A saved run's config (run.json, a checkpoint): its plugins imported, fields it predates at
  their defaults."""
  config = get_default(saved.get("plugins", ()))
  config.update(saved)
  return config


def flatten(c, prefix: str = "") -> dict:
  """{'model.latent_dim': 16, ...} for a (nested) ConfigDict or dict."""
  out = {}
  for k, v in dict(c).items():
    if isinstance(v, dict | ml_collections.ConfigDict):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
  return out


def unknown_keys(c) -> list[str]:
  """Fields of c that are not declared (typos, stale configs, a plugin not imported)."""
  known = by_name()
  return sorted(k for k in flatten(c) if k not in known)


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad field, its value and what is allowed."""
  known = by_name()
  extra = unknown_keys(c)
  if extra:
    raise ValueError(f"{extra[0]}: unknown config key{suggest(extra[0], known)}; the known ones are "
                     "listed by `python -m experiments.train --help` and in docs/config.md")
  values = flatten(c)
  for f in known.values():
    value = values.get(f.name, f.default)
    value = tuple(value) if isinstance(value, list) else value
    if not f.check.ok(value):
      raise ValueError(f"{f.name}={value!r}: expected {f.check.expected}")
  if c.weight_decay is not None and c.optimizer != "adamw":
    raise ValueError(f"weight_decay={c.weight_decay!r}: only optimizer='adamw' decays weights "
                     f"(optimizer={c.optimizer!r}); use adamw or leave weight_decay None")
  objectives.check(c)
  models.check(c.model, objectives.head(c))
  data.check(c.data)


def resume_conflicts(saved: dict, c: ml_collections.ConfigDict) -> tuple[list[str], list[str]]:
  """('field: saved -> new' for each changed field a rerun may not change, the same for NEVER fields).

  A field the saved run predates counts as holding its default there.
  """
  old, new = flatten(saved), flatten(c)
  changed, reshaping = [], []
  for f in all_fields():
    default = list(f.default) if isinstance(f.default, tuple) else f.default
    a, b = old.get(f.name, default), new.get(f.name, default)
    if f.rerun != FREE and a != b:
      changed.append(f"{f.name}: {a!r} -> {b!r}")
      if f.rerun == NEVER:
        reshaping.append(changed[-1])
  return changed, reshaping


def markdown_table() -> str:
  """docs/config.md's table of the built-in fields: name, default, allowed values, rerun rule, what."""
  rule = {FREE: "yes", ALLOW: "with `--allow_config_change`", NEVER: "no"}
  rows = ["| field | default | allowed | rerun may change | what |", "| --- | --- | --- | --- | --- |"]
  for f in all_fields(builtin_only=True):
    rows.append(f"| `{f.name}` | `{f.default!r}` | {f.check.expected} | {rule[f.rerun]} | {f.help} |")
  return "\n".join(rows)


__all__ = ["ALLOW", "CORE", "EVAL", "FREE", "NEVER", "Check", "Field", "all_fields", "by_name", "closest",
           "flatten", "from_saved", "get_default", "import_plugins", "markdown_table", "resume_conflicts",
           "suggest", "unknown_keys", "validate"]
