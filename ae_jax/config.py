"""The run configuration: every field declared once, with its default, its check and its rerun rule.

`get_default()`, `validate()`, the resume rules (`resume_conflicts`) and the
README's field table (`markdown_table()`, kept equal by a test) all come from
`FIELDS`. Config files state only what differs from the defaults.
"""

from collections.abc import Callable
import dataclasses
import difflib
from typing import Any

import ml_collections

from ae_jax import data, layers, losses, models, noise, objectives

PARALLEL = ("jit", "pmap", "mesh")
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "warmup_cosine")
BINARIZE = ("none", "dynamic")

# What a rerun in the same workdir may do with a field:
FREE = "free"  # change it: bookkeeping, placement, or num_epochs (which extends a run)
ALLOW = "allow"  # change it with --allow_config_change: it alters what is learned
NEVER = "never"  # never: the saved params or optimizer state have another shape


@dataclasses.dataclass(frozen=True)
class Check:
  """A predicate and the phrase that says what it accepts (`expected <phrase>`)."""

  ok: Callable[[Any], bool]
  expected: str


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, int | float) and not isinstance(v, bool) and v == v


POSITIVE = Check(lambda v: _is_int(v) and v > 0, "a positive integer")
NON_NEGATIVE = Check(lambda v: _is_int(v) and v >= 0, "an integer >= 0")
BOOL = Check(lambda v: isinstance(v, bool), "True or False")
NUMBER = Check(_is_number, "a number")
POSITIVE_NUMBER = Check(lambda v: _is_number(v) and v > 0, "a positive number")
NON_NEGATIVE_NUMBER = Check(lambda v: _is_number(v) and v >= 0, "a number >= 0")
FRACTION = Check(lambda v: _is_number(v) and 0 <= v <= 1, "a fraction in [0, 1]")
LEVELS = Check(lambda v: isinstance(v, tuple | list) and len(v) > 0 and all(POSITIVE.ok(f) for f in v),
               "a non-empty tuple of positive integers")
OPEN_FRACTION = Check(lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)")
TEXT = Check(lambda v: isinstance(v, str) and v != "", "a non-empty string")


def one_of(*allowed) -> Check:
  return Check(lambda v: v in allowed, f"one of {allowed}")


def optional(check: Check) -> Check:
  return Check(lambda v: v is None or check.ok(v), f"None or {check.expected}")


@dataclasses.dataclass(frozen=True)
class Field:
  name: str  # dotted: 'model.latent_dim'
  default: Any
  check: Check
  rerun: str  # FREE, ALLOW or NEVER
  help: str
  field_type: type | None = None  # for a None default: what `--config.NAME=...` parses to


FIELDS = (
    Field("seed", 0, NON_NEGATIVE, ALLOW, "root of every key: init, data order, noise, eval"),
    Field("objective", "ae", one_of(*objectives.NAMES), ALLOW,
          "what the step minimises (ae_jax/objectives.py)"),
    Field("loss", "mse", one_of(*losses.NAMES), ALLOW,
          "reconstruction loss of the `ae` objective, from the decoder's logits"),
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
    Field("parallel", "jit", one_of(*PARALLEL), FREE,
          "`jit`: 1 device; `pmap` or `mesh`: data parallel over num_devices"),
    Field("num_devices", None, optional(POSITIVE), FREE, "None: all local devices", int),
    Field("steps_per_call", None, optional(POSITIVE), FREE,
          "train steps per compiled call (a lax.scan); None: per backend (train.AUTO_STEPS_PER_CALL)",
          int),
    Field("data_on_device", True, BOOL, FREE,
          "training images on the devices once, batches gathered by index; False: from the host"),
    Field("eval_batch_size", 1000, POSITIVE, FREE, "examples per eval call"),
    Field("log_every_steps", 100, POSITIVE, FREE, "progress line and metrics.jsonl record cadence"),
    Field("checkpoint_every_steps", 1000, POSITIVE, FREE, "also at every epoch end and the last step"),
    Field("keep_checkpoints", 3, POSITIVE, FREE, "how many of the latest checkpoints are kept"),
    Field("num_images", 8, POSITIVE, FREE, "examples drawn in reconstructions.png / denoising.png"),
    Field("model.filters", (32, 64), LEVELS, NEVER, "channels of the stride-2 conv levels"),
    Field("model.kernel_size", 3, POSITIVE, NEVER, "conv kernel size"),
    Field("model.latent_dim", 16, POSITIVE, NEVER, "size of the dense latent z_BD"),
    Field("model.num_codes", 512, POSITIVE, NEVER, "vqvae: codebook size K (codes of size latent_dim)"),
    Field("model.pad", False, BOOL, NEVER,
          "zero-pad images that 2**levels does not divide to the next multiple, crop the output back"),
    Field("model.output", "probabilities", one_of(*models.OUTPUTS), ALLOW,
          "what the model's __call__ returns; losses always use logits"),
    Field("model.conv_impl", "auto", one_of("auto", *layers.IMPLS), FREE,
          "same params and numerics, different speed; `auto`: per backend (layers.resolve)"),
    Field("model.dtype", "float32", one_of(*models.DTYPES), ALLOW,
          "compute dtype; params and optimizer state stay float32"),
    Field("vae.likelihood", "bernoulli", one_of(*objectives.LIKELIHOODS), ALLOW,
          "vae, iwae: p(x|z) from the decoder's logits; `gaussian`: mean sigmoid(logits)"),
    Field("vae.scale", None, optional(POSITIVE_NUMBER), NEVER,
          "vae, iwae with a gaussian likelihood: the pixels' std; None: learned (one param)", float),
    Field("vae.beta", 1.0, NON_NEGATIVE_NUMBER, ALLOW, "vae: weight of the KL term (beta-VAE for > 1)"),
    Field("vae.kl_warmup_steps", 0, NON_NEGATIVE, ALLOW, "vae: the KL weight ramps from 0 over these steps"),
    Field("vae.num_samples", 5, POSITIVE, ALLOW, "iwae: importance samples k per example"),
    Field("sparse.penalty", "l1", one_of(*objectives.SPARSE_PENALTIES), ALLOW,
          "sparse: `l1` of z, or `kl` of sigmoid(z) to the rate sparse.target"),
    Field("sparse.weight", 1e-4, NON_NEGATIVE_NUMBER, ALLOW, "sparse: weight of the penalty"),
    Field("sparse.target", 0.05, OPEN_FRACTION, ALLOW, "sparse, penalty `kl`: the target rate"),
    Field("contractive.weight", 1e-4, NON_NEGATIVE_NUMBER, ALLOW,
          "contractive: weight of ||dz/dx||_F^2"),
    Field("vq.commitment", 0.25, NON_NEGATIVE_NUMBER, ALLOW, "vqvae: commitment cost"),
    Field("vq.ema_decay", None, optional(OPEN_FRACTION), NEVER,
          "vqvae: EMA codebook updates with this decay; None: codes learned by gradient", float),
    Field("noise.kind", "none", one_of(*noise.KINDS), ALLOW, "input corruption (denoising)"),
    Field("noise.mean", 0.5, NUMBER, ALLOW, "gaussian: mean of the added noise"),
    Field("noise.std", 0.5, NON_NEGATIVE_NUMBER, ALLOW, "gaussian: std of the added noise"),
    Field("noise.clip", True, BOOL, ALLOW, "gaussian: clip the input to [0, 1]"),
    Field("noise.nu", 0.3, FRACTION, ALLOW, "masking, salt_and_pepper: fraction of pixels hit"),
    Field("data.source", "tfds", one_of(*data.SOURCES), ALLOW,
          "`tfds`, `idx` (four MNIST-format files in data.dir), `npz` (your arrays: data.dir is a .npz "
          "file or a folder of .npy files) or `embedded` (5,000 digits, offline)"),
    Field("data.name", "mnist", TEXT, ALLOW, "TFDS dataset name"),
    Field("data.dir", None, optional(TEXT), FREE, "tfds: TFDS data_dir (None: TFDS default); "
          "idx: the folder of the four IDX files; npz: the .npz file or folder of .npy files", str),
    Field("data.download", True, BOOL, FREE, "tfds: download and prepare when not prepared"),
    Field("data.binarize", "none", one_of(*BINARIZE), ALLOW,
          "`dynamic`: train on Bernoulli(x) drawn anew each step; evaluate one fixed draw of the test set"),
    Field("data.train_size", None, optional(POSITIVE), ALLOW, "first N training examples; None: all",
          int),
    Field("data.test_size", None, optional(POSITIVE), ALLOW, "first N test examples; None: all", int),
)
FIELDS += (
    Field("eval.final", False, BOOL, FREE,
          "at the last step also: SSIM, active units, IS-NLL, codebook use, Frechet distance of samples, "
          "probe accuracies (ae_jax/evaluation.py)"),
    Field("eval.nll_samples", 200, POSITIVE, FREE, "final eval: importance samples of the NLL estimate"),
    Field("eval.nll_examples", None, optional(POSITIVE), FREE,
          "final eval: test examples of the NLL estimate; None: all", int),
    Field("eval.num_samples", 10000, POSITIVE, FREE, "final eval: generated images for the Frechet distance"),
    Field("eval.gmm_components", 10, POSITIVE, FREE,
          "final eval: mixture fitted to deterministic models' training latents, to sample from"),
)
BY_NAME = {f.name: f for f in FIELDS}


def get_default() -> ml_collections.ConfigDict:
  """The reference convolutional AE on MNIST (Keras example): latent 16, Adam 1e-3, MSE."""
  c = ml_collections.ConfigDict()
  for f in FIELDS:
    *parents, leaf = f.name.split(".")
    node = c
    for p in parents:
      if p not in node:
        node[p] = ml_collections.ConfigDict()
      node = node[p]
    node[leaf] = ml_collections.FieldReference(None, field_type=f.field_type) if f.default is None \
        else f.default
  return c


def flatten(c, prefix: str = "") -> dict:
  """{'model.latent_dim': 16, ...} for a (nested) ConfigDict or dict."""
  out = {}
  for k, v in dict(c).items():
    if isinstance(v, dict | ml_collections.ConfigDict):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
  return out


def closest(name: str, known) -> str | None:
  """The known name nearest to `name` (a typo's intended name), if any is near."""
  close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
  return close[0] if close else None


def suggest(name: str, known) -> str:
  """' (did you mean X?)' for the closest known name, or ''."""
  close = closest(name, known)
  return f" (did you mean {close}?)" if close else ""


def unknown_keys(c) -> list[str]:
  """Fields of c that are not declared (typos, stale configs)."""
  return sorted(k for k in flatten(c) if k not in BY_NAME)


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad field, its value and what is allowed."""
  extra = unknown_keys(c)
  if extra:
    raise ValueError(f"{extra[0]}: unknown config key{suggest(extra[0], BY_NAME)}; the known ones are "
                     "listed by `python -m experiments.train --helpfull` and in ae_jax/config.py")
  values = flatten(c)
  for f in FIELDS:
    value = values.get(f.name, f.default)
    value = tuple(value) if isinstance(value, list) else value
    if not f.check.ok(value):
      raise ValueError(f"{f.name}={value!r}: expected {f.check.expected}")
  if c.weight_decay is not None and c.optimizer != "adamw":
    raise ValueError(f"weight_decay={c.weight_decay!r}: only optimizer='adamw' decays weights "
                     f"(optimizer={c.optimizer!r}); use adamw or leave weight_decay None")
  if c.vae.scale is not None and c.vae.likelihood != "gaussian":
    raise ValueError(f"vae.scale={c.vae.scale!r}: only vae.likelihood='gaussian' has a scale "
                     f"(vae.likelihood={c.vae.likelihood!r}); leave it None")
  if c.data.source == "idx" and not c.data.dir:
    raise ValueError("data.dir=None: data.source='idx' needs the folder holding the four IDX files")
  if c.data.source == "npz" and not c.data.dir:
    raise ValueError("data.dir=None: data.source='npz' needs a .npz file or a folder of .npy files")


def resume_conflicts(saved: dict, c: ml_collections.ConfigDict) -> tuple[list[str], list[str]]:
  """('field: saved -> new' for each changed field a rerun may not change, the same for NEVER fields).

  A field the saved run predates counts as holding its default there.
  """
  old, new = flatten(saved), flatten(c)
  changed, reshaping = [], []
  for f in FIELDS:
    default = list(f.default) if isinstance(f.default, tuple) else f.default
    a, b = old.get(f.name, default), new.get(f.name, default)
    if f.rerun != FREE and a != b:
      changed.append(f"{f.name}: {a!r} -> {b!r}")
      if f.rerun == NEVER:
        reshaping.append(changed[-1])
  return changed, reshaping


def markdown_table() -> str:
  """The README's table of fields: name, default, allowed values, rerun rule, what it does."""
  rule = {FREE: "yes", ALLOW: "with `--allow_config_change`", NEVER: "no"}
  rows = ["| field | default | allowed | rerun may change | what |", "| --- | --- | --- | --- | --- |"]
  for f in FIELDS:
    rows.append(f"| `{f.name}` | `{f.default!r}` | {f.check.expected} | {rule[f.rerun]} | {f.help} |")
  return "\n".join(rows)
