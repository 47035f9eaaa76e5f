"""The run configuration: defaults for every knob and the checks made before any work."""

import ml_collections

from ae_jax import data, layers, losses, models, noise

PARALLEL = ("jit", "pmap", "mesh")
OPTIMIZERS = ("adam", "adamw", "sgd")
# Fields a rerun in the same workdir may change: they do not alter what is learned
# (num_epochs extends a run; the rest are bookkeeping or placement).
RESUMABLE = ("num_epochs", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
             "eval_batch_size", "num_images", "parallel", "num_devices", "steps_per_call",
             "data_on_device", "data.dir", "data.download", "model.conv_impl")
# Model fields that leave the params' shapes alone, so a rerun may change them with
# --allow_config_change; any other model.* field makes the saved params unloadable.
PARAM_NEUTRAL = ("model.output", "model.conv_impl", "model.dtype")


def get_default() -> ml_collections.ConfigDict:
  """The reference convolutional AE on MNIST (Keras example): latent 16, Adam 1e-3, MSE."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 32
  c.num_epochs = 1
  c.optimizer = "adam"
  c.learning_rate = 1e-3
  c.loss = "mse"
  c.parallel = "jit"
  c.num_devices = ml_collections.FieldReference(None, field_type=int)  # None: all local devices
  # Train steps per compiled call (K > 1: a lax.scan over K batches). None picks
  # per backend from measurements (train.AUTO_STEPS_PER_CALL).
  c.steps_per_call = ml_collections.FieldReference(None, field_type=int)
  # Place the training images on the devices once; each call then sends only the
  # batches' indices. False gathers each batch on the host (for data larger than
  # device memory).
  c.data_on_device = True
  c.eval_batch_size = 1000
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.num_images = 8  # examples drawn in reconstructions.png / denoising.png

  c.model = ml_collections.ConfigDict()
  c.model.filters = (32, 64)
  c.model.kernel_size = 3
  c.model.latent_dim = 16
  c.model.output = "probabilities"
  # Same params and numerics (to ~1e-6), different speed; 'auto' picks per backend
  # (models.resolve_conv_impl, with the measurements).
  c.model.conv_impl = "auto"
  c.model.dtype = "float32"  # compute dtype; 'bfloat16' keeps float32 params and optimizer state

  c.noise = ml_collections.ConfigDict()
  c.noise.kind = "none"
  c.noise.mean = 0.5
  c.noise.std = 0.5
  c.noise.clip = True
  c.noise.nu = 0.3

  c.data = ml_collections.ConfigDict()
  c.data.source = "tfds"  # tfds | idx | embedded
  c.data.name = "mnist"
  # tfds: TFDS data_dir (None = TFDS default); idx: the folder of the four IDX files.
  c.data.dir = ml_collections.FieldReference(None, field_type=str)
  c.data.download = True
  c.data.train_size = ml_collections.FieldReference(None, field_type=int)  # None: all
  c.data.test_size = ml_collections.FieldReference(None, field_type=int)
  return c


def _one_of(field: str, value, allowed) -> None:
  if value not in allowed:
    raise ValueError(f"{field}={value!r}: expected one of {tuple(allowed)}")


def _positive(field: str, value) -> None:
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ValueError(f"{field}={value!r}: expected a positive integer")


def _number(field: str, value, lo=None, hi=None, what="a number") -> None:
  ok = isinstance(value, int | float) and not isinstance(value, bool) and value == value
  if not ok or (lo is not None and value < lo) or (hi is not None and value > hi):
    raise ValueError(f"{field}={value!r}: expected {what}")


def flatten(c, prefix: str = "") -> dict:
  """{'model.latent_dim': 16, ...} for a (nested) ConfigDict or dict."""
  out = {}
  for k, v in dict(c).items():
    if isinstance(v, dict | ml_collections.ConfigDict):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
  return out


def unknown_keys(c: ml_collections.ConfigDict) -> list[str]:
  """Fields of c that the default config does not have (typos, stale configs)."""
  known = flatten(get_default())
  return sorted(k for k in flatten(c) if k not in known)


def resume_conflicts(saved: dict, c: ml_collections.ConfigDict) -> list[str]:
  """'field: saved -> new' for each field that differs from a saved run and may not change."""
  old, new = flatten(saved), flatten(c)
  return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
          if k not in RESUMABLE and old.get(k) != new.get(k)]


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad field, its value and what is allowed."""
  extra = unknown_keys(c)
  if extra:
    raise ValueError(f"{extra[0]}: unknown config key (see ae_jax/config.py for the known ones)")
  if not isinstance(c.seed, int) or isinstance(c.seed, bool) or c.seed < 0:
    raise ValueError(f"seed={c.seed!r}: expected an integer >= 0")
  for field in ("batch_size", "num_epochs", "eval_batch_size",
                "log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
    _positive(field, c[field])
  for field in ("num_devices", "steps_per_call"):
    if c[field] is not None:
      _positive(field, c[field])
  if not isinstance(c.data_on_device, bool):
    raise ValueError(f"data_on_device={c.data_on_device!r}: expected True or False")
  _number("learning_rate", c.learning_rate, what="a positive number")
  if not c.learning_rate > 0:
    raise ValueError(f"learning_rate={c.learning_rate!r}: expected a positive number")
  _one_of("optimizer", c.optimizer, OPTIMIZERS)
  _one_of("loss", c.loss, losses.NAMES)
  _one_of("parallel", c.parallel, PARALLEL)
  _one_of("model.output", c.model.output, models.OUTPUTS)
  _one_of("model.conv_impl", c.model.conv_impl, ("auto", *layers.IMPLS))
  _one_of("model.dtype", c.model.dtype, models.DTYPES)
  _positive("model.latent_dim", c.model.latent_dim)
  _positive("model.kernel_size", c.model.kernel_size)
  if not c.model.filters:
    raise ValueError(f"model.filters={c.model.filters!r}: expected at least one level")
  for f in c.model.filters:
    _positive("model.filters", f)
  _one_of("noise.kind", c.noise.kind, noise.KINDS)
  _number("noise.mean", c.noise.mean)
  _number("noise.std", c.noise.std, lo=0.0, what="a number >= 0")
  _number("noise.nu", c.noise.nu, lo=0.0, hi=1.0, what="a fraction in [0, 1]")
  _one_of("data.source", c.data.source, data.SOURCES)
  if c.data.source == "idx" and not c.data.dir:
    raise ValueError("data.dir=None: data.source='idx' needs the folder holding the four IDX files")
  for field in ("train_size", "test_size"):
    if c.data[field] is not None:
      _positive(f"data.{field}", c.data[field])
