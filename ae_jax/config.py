"""The run configuration: defaults for every knob and the checks made before any work."""

import ml_collections

from ae_jax import data, losses, models, noise

PARALLEL = ("jit", "pmap", "mesh")
OPTIMIZERS = ("adam", "adamw", "sgd")


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
  # Train steps per compiled call: 1 is fastest on XLA:CPU, K > 1 (a lax.scan
  # over K batches) usually wins on GPU/TPU where per-call overhead dominates.
  c.steps_per_call = 1
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


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad field, its value and what is allowed."""
  for field in ("batch_size", "num_epochs", "steps_per_call", "eval_batch_size",
                "log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
    _positive(field, c[field])
  if c.num_devices is not None:
    _positive("num_devices", c.num_devices)
  if not c.learning_rate > 0:
    raise ValueError(f"learning_rate={c.learning_rate!r}: expected a positive number")
  _one_of("optimizer", c.optimizer, OPTIMIZERS)
  _one_of("loss", c.loss, losses.NAMES)
  _one_of("parallel", c.parallel, PARALLEL)
  _one_of("model.output", c.model.output, models.OUTPUTS)
  _positive("model.latent_dim", c.model.latent_dim)
  _positive("model.kernel_size", c.model.kernel_size)
  if not c.model.filters:
    raise ValueError(f"model.filters={c.model.filters!r}: expected at least one level")
  for f in c.model.filters:
    _positive("model.filters", f)
  _one_of("noise.kind", c.noise.kind, noise.KINDS)
  if c.noise.kind == "gaussian" and not c.noise.std >= 0:
    raise ValueError(f"noise.std={c.noise.std!r}: expected >= 0")
  if c.noise.kind in ("masking", "salt_and_pepper") and not 0.0 <= c.noise.nu <= 1.0:
    raise ValueError(f"noise.nu={c.noise.nu!r}: expected a fraction in [0, 1]")
  _one_of("data.source", c.data.source, data.SOURCES)
  if c.data.source == "idx" and not c.data.dir:
    raise ValueError("data.dir=None: data.source='idx' needs the folder holding the four IDX files")
