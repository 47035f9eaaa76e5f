"""Four CPU devices for the multi-device tests, the data fixtures, and helpers the tests share."""

import os
import shutil
import tempfile

import jax

# XLA:CPU compiles at LLVM -O0: the suite compiles hundreds of small programs and runs
# each a few times, so compiling dominates it (tests/test_objectives.py: 83 s at the
# default level, 48 s at 0). The ops and dtypes are the same; the loops are less optimised,
# and a reduction may round differently in the last bits, within every tolerance here.
# YNN fusion off, as the entry points set it (experiments.use_fast_cpu_settings), so that
# in-process runs compute what the runs the tests launch compute, and share their compiled
# programs in the persistent cache. Both are read at backend start, and the processes the
# tests launch inherit them. A level set by the caller is kept.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
if "xla_cpu_experimental_ynn_fusion_type" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_cpu_experimental_ynn_fusion_type="
# Four CPU devices for this process's multi-device tests, with two intra-op threads per
# device (experiments.size_cpu_pool): with fewer, a pmap all-reduce can wait forever for a
# device that finds no free thread. For this process's backend only: the runs the tests
# launch size their own pool (one device: one thread per core, 30% faster than eight). The
# size decides how XLA:CPU splits a reduction, and so the last bits of the numbers: a launched
# run compared bit for bit with an in-process one gets PJRT_NPROC=POOL.
jax.config.update("jax_num_cpu_devices", 4)
_pool = os.environ.get("PJRT_NPROC")
POOL = int(_pool or 8)
os.environ["PJRT_NPROC"] = str(POOL)
jax.devices()  # the backend starts here, with these settings
if _pool is None:
  del os.environ["PJRT_NPROC"]

import pytest  # noqa: E402

from ae_jax import data  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Decoded-TFDS caches of this session (and of the runs it starts) stay out of the user's ~/.cache.
CACHE = os.environ["AE_JAX_CACHE"] = tempfile.mkdtemp(prefix="ae_jax_cache_")
# The in-process tests share JAX's persistent compilation cache with the runs they start, as the
# entry points do: tests that build the same small programs compile them once per session.
jax.config.update("jax_compilation_cache_dir", os.path.join(os.environ["AE_JAX_CACHE"], "jax"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
# The notebooks' kernels and the scripts the tests start read the same cache from the environment.
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(os.environ["AE_JAX_CACHE"], "jax")
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.1"
SHARED_MNIST = os.path.join(os.path.dirname(REPO), "shared", "data", "mnist")


def pytest_unconfigure(config):
  """The session's caches (tens of MB) go with it."""
  shutil.rmtree(CACHE, ignore_errors=True)


def write_mnist_idx(directory: str, arrays, gz: bool = True) -> str:
  """Writes (train_x, train_y, test_x, test_y) uint8 arrays as the four standard IDX files."""
  os.makedirs(directory, exist_ok=True)
  train_x, train_y, test_x, test_y = arrays
  suffix = ".gz" if gz else ""
  for (split, what), name in data.idx.FILES.items():
    x = {"train": train_x, "test": test_x}[split] if what == "images" else \
        {"train": train_y, "test": test_y}[split]
    if what == "images":
      x = x.reshape(x.shape[0], x.shape[1], x.shape[2])
    data.write_idx(os.path.join(directory, name + suffix), x)
  return directory


@pytest.fixture(scope="session")
def embedded_uint8():
  return data.load_embedded()


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory, embedded_uint8):
  """../shared/data/mnist when it exists, else IDX files written from the embedded digits."""
  if os.path.isdir(SHARED_MNIST):
    return SHARED_MNIST
  return write_mnist_idx(str(tmp_path_factory.mktemp("mnist_idx")), embedded_uint8)


@pytest.fixture(scope="session")
def small_idx_dir(tmp_path_factory, embedded_uint8):
  """A small MNIST-format folder (embedded digits) for fast end-to-end runs."""
  tx, ty, vx, vy = embedded_uint8
  return write_mnist_idx(str(tmp_path_factory.mktemp("small_idx")),
                         (tx[:512], ty[:512], vx[:128], vy[:128]))


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory, embedded_uint8):
  """A real prepared TFDS dataset, 'tiny_digits' (600 train / 200 test embedded digits)."""
  tx, ty, vx, vy = embedded_uint8
  directory = str(tmp_path_factory.mktemp("tfds"))
  data.write_tfds(directory, "tiny_digits", (tx[:600], ty[:600], vx[:200], vy[:200]))
  return directory
