"""PNG figures: image grids with labelled rows.

Matplotlib's object API (Figure, no pyplot): importing ae_jax neither imports
matplotlib (~0.3 s, paid when the first picture is drawn) nor changes a
notebook's backend, and figures are freed with their last reference.
"""

from collections.abc import Sequence

import numpy as np


def _subplots(*args, **kwargs):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=kwargs.pop("figsize"))
  return fig, fig.subplots(*args, **kwargs)


def image_rows(path: str, rows: Sequence[np.ndarray], labels: Sequence[str], title: str = "") -> None:
  """Saves one row per array of images [N, H, W, C] in [0, 1], each row labelled."""
  n = max(len(r) for r in rows)
  fig, axes = _subplots(len(rows), n, figsize=(1.2 * n + 1.0, 1.3 * len(rows) + 0.4),
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


def latent_scatter(path: str, xy_N2: np.ndarray, labels_N: np.ndarray, title: str,
                   axis_labels=("z[0]", "z[1]")) -> None:
  """2-D points coloured by integer label, with a legend."""
  fig, ax = _subplots(figsize=(6.5, 5.5))
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  cmap = colormaps["tab10"]
  for c in np.unique(labels_N):
    sel = labels_N == c
    ax.scatter(xy_N2[sel, 0], xy_N2[sel, 1], s=4, alpha=0.6, color=cmap(int(c) % 10), label=str(c))
  ax.legend(markerscale=3, fontsize=8, title="label", loc="best")
  ax.set_xlabel(axis_labels[0])
  ax.set_ylabel(axis_labels[1])
  ax.set_title(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def image_grid(path: str, images_nnHWC: np.ndarray, title: str, extent=None) -> None:
  """An n x m grid of images tiled into one picture; extent labels the axes with latent ranges."""
  n, m, h, w, c = images_nnHWC.shape
  tiled = images_nnHWC.transpose(0, 2, 1, 3, 4).reshape(n * h, m * w, c)
  fig, ax = _subplots(figsize=(7, 7 * n / m))
  ax.imshow(np.clip(tiled[..., 0] if c == 1 else tiled, 0, 1), cmap="gray", vmin=0, vmax=1,
            extent=extent)
  if extent is None:
    ax.set_xticks([])
    ax.set_yticks([])
  else:
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
  ax.set_title(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def training_curves(path: str, records: list[dict]) -> None:
  """Train loss and eval MSE/PSNR against step, from metrics.jsonl records."""
  train = [r for r in records if r["kind"] == "train"]
  evals = [r for r in records if r["kind"] == "eval"]
  fig, (ax0, ax1) = _subplots(1, 2, figsize=(11, 4))
  ax0.plot([r["step"] for r in train], [r["train_loss"] for r in train], label="train loss")
  if evals:
    ax0.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="test loss")
    ax1.plot([r["step"] for r in evals], [r["recon_psnr"] for r in evals], "o-", label="test PSNR")
    if "corruption_psnr" in evals[0]:
      ax1.plot([r["step"] for r in evals], [r["corruption_psnr"] for r in evals], "s--",
               label="corrupted input PSNR")
  ax0.set_yscale("log")
  ax0.set_xlabel("step")
  ax0.set_title("loss", fontsize=10)
  ax0.legend()
  ax1.set_xlabel("step")
  ax1.set_ylabel("dB")
  ax1.set_title("test PSNR", fontsize=10)
  ax1.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
