"""Your own data source, registered from outside ae_jax: random bars, generated (`data.source=bars`).

Each image holds 1-3 horizontal or vertical bright bars on a dark background;
the label is the orientation (0 horizontal, 1 vertical). Use it with
`--plugins=docs/examples/bars.py --config.data.source=bars`.
"""

import numpy as np

from ae_jax import data, fields

FIELDS = (
    fields.Field("data.bars_size", 16, fields.POSITIVE, fields.ALLOW, "bars: image height and width"),
    fields.Field("data.bars_count", 2048, fields.POSITIVE, fields.ALLOW, "bars: training images (test: 1/4)"),
)


def _images(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  vertical = rng.integers(0, 2, n)
  images = np.zeros((n, size, size, 1), np.uint8)
  for i in range(n):
    for row in rng.choice(size, rng.integers(1, 4), replace=False):
      if vertical[i]:
        images[i, :, row] = 255
      else:
        images[i, row, :] = 255
  return images, vertical


def load(cfg):
  """(train, test, where): check_split checks each split's arrays once."""
  where = f"bars:{cfg.bars_size}px"
  train = data.check_split(*_images(cfg.bars_count, cfg.bars_size, seed=0), where, "train")
  test = data.check_split(*_images(max(1, cfg.bars_count // 4), cfg.bars_size, seed=1), where, "test")
  return train, test, where


data.register("bars", data.DataSource(load, fields=FIELDS))
