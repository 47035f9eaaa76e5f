"""PNG figures: image grids with labelled rows."""

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np


def image_rows(path: str, rows: Sequence[np.ndarray], labels: Sequence[str], title: str = "") -> None:
  """Saves one row per array of images [N, H, W, C] in [0, 1], each row labelled."""
  n = max(len(r) for r in rows)
  fig, axes = plt.subplots(len(rows), n, figsize=(1.2 * n + 1.0, 1.3 * len(rows) + 0.4),
                           squeeze=False)
  for i, (images, label) in enumerate(zip(rows, labels)):
    for j in range(n):
      ax = axes[i, j]
      ax.set_xticks([])
      ax.set_yticks([])
      for spine in ax.spines.values():
        spine.set_visible(False)
      if j < len(images):
        img = np.clip(np.asarray(images[j], np.float32), 0.0, 1.0)
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0.0, vmax=1.0)
    axes[i, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
