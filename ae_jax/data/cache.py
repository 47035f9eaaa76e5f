"""Decoded arrays cached on disk, each file with its SHA-256 (a damaged file is made again)."""

import hashlib
import os
import zipfile
import zlib

from absl import logging
import numpy as np


def cache_dir() -> str:
  """Where decoded arrays are cached: $AE_JAX_CACHE, default ~/.cache/ae_jax."""
  return os.environ.get("AE_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "ae_jax"))


def digest(arrays: dict) -> str:
  """SHA-256 (hex) of named arrays."""
  h = hashlib.sha256()
  for name in sorted(arrays):
    h.update(name.encode())
    h.update(np.ascontiguousarray(arrays[name]).tobytes())
  return h.hexdigest()


def read_cache(path: str) -> dict | None:
  """The arrays cached at path, if the file is there and matches its SHA-256; else None."""
  if not os.path.exists(path):
    return None
  try:
    with np.load(path) as f:
      arrays = {k: f[k] for k in f.files if k != "sha256"}
      if digest(arrays) == str(f["sha256"]):
        return arrays
  except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile):
    pass
  logging.warning("cache file %s is damaged; making it again", path)
  return None


def write_cache(path: str, arrays: dict) -> None:
  """Writes arrays and their SHA-256 to path whole (temp file, then rename)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp.npz"
  try:
    np.savez(tmp, sha256=digest(arrays), **arrays)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
