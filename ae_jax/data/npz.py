"""Your own arrays: a .npz file, or a folder of .npy files."""

import os
import zipfile

import numpy as np

from ae_jax.data.source import DataError, DataSource, check_split

KEYS = ("train_images", "train_labels", "test_images", "test_labels")


def load_npz(path: str) -> dict[str, np.ndarray]:
  """The named arrays of a .npz file or a folder of .npy files, refusing names it does not know.

  Names: train_images, test_images ([N, H, W] or [N, H, W, C], uint8 or float
  in [0, 1]) and, optionally, train_labels and test_labels (integers). Anything
  else is an error, so a misnamed array is not silently left out.
  """
  if os.path.isdir(path):
    found = {f[:-4]: os.path.join(path, f) for f in os.listdir(path) if f.endswith(".npy")}
    try:
      arrays = {k: np.load(v, allow_pickle=False) for k, v in found.items()}
    except (OSError, ValueError) as e:
      raise DataError(f"data.dir={path!r}: cannot read its .npy files ({e})") from None
  elif os.path.isfile(path):
    try:
      with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
      raise DataError(f"data.dir={path!r}: not a readable .npz file ({type(e).__name__}: {e})") from None
  else:
    raise DataError(f"data.dir={path!r}: no such .npz file or folder of .npy files")
  unknown = sorted(set(arrays) - set(KEYS))
  missing = [k for k in ("train_images", "test_images") if k not in arrays]
  if unknown or missing:
    raise DataError(f"data.dir={path!r}: holds {sorted(arrays)}; expected train_images and "
                    "test_images, optionally train_labels and test_labels"
                    + (f" (unknown: {unknown})" if unknown else "")
                    + (f" (missing: {missing})" if missing else ""))
  return arrays


def _load(cfg):
  arrays = load_npz(cfg.dir)
  where = f"npz:{os.path.abspath(cfg.dir)}"
  train, test = (check_split(arrays[f"{s}_images"], arrays.get(f"{s}_labels"), where, s)
                 for s in ("train", "test"))
  if train.image_shape != test.image_shape:
    raise DataError(f"{where}: train images {train.image_shape} and test images {test.image_shape} "
                    "differ in shape")
  return train, test, where


SOURCE = DataSource(_load, needs_dir="a .npz file or a folder of .npy files", module=__name__)
