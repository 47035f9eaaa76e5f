"""Generated colour pictures: a square, disc or triangle of one colour on a background of another.

A real dataset for colour and size (any H = W), written in the formats a user's data comes in
(`write_pictures`: a folder of PNGs, one subfolder per shape; `records.write_array_record`).
Labels: 0 square, 1 disc, 2 triangle. Every picture is a function of (seed, index) alone.
"""

import os

import numpy as np

SHAPES = ("square", "disc", "triangle")


def render(index: int, size: int = 64, seed: int = 0) -> tuple[np.ndarray, int]:
  """(uint8 [size, size, 3], label) of picture `index`: shape, colours, scale and place drawn from
  numpy's generator seeded with (seed, index)."""
  rng = np.random.default_rng((seed, index))
  label = int(rng.integers(len(SHAPES)))
  background, colour = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
  while np.abs(background.astype(int) - colour).sum() < 120:  # keep the shape visible
    colour = rng.integers(0, 256, 3)
  radius = rng.uniform(0.15, 0.35) * size
  cy, cx = rng.uniform(radius, size - radius, 2)
  yy, xx = np.mgrid[0:size, 0:size] + 0.5
  dy, dx = yy - cy, xx - cx
  if label == 0:
    inside = (np.abs(dy) <= radius * 0.8) & (np.abs(dx) <= radius * 0.8)
  elif label == 1:
    inside = dy ** 2 + dx ** 2 <= radius ** 2
  else:  # pointing up: below the apex, between the two sides
    inside = (dy <= radius * 0.7) & (dy >= -radius) & (np.abs(dx) <= (dy + radius) * 0.6)
  image = np.where(inside[..., None], colour, background).astype(np.uint8)
  return image, label


def render_many(n: int, size: int = 64, seed: int = 0, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Pictures start .. start + n - 1: (uint8 [n, size, size, 3], int32 labels [n])."""
  pictures = [render(i, size, seed) for i in range(start, start + n)]
  return np.stack([p for p, _ in pictures]), np.asarray([c for _, c in pictures], np.int32)


def write_pictures(directory: str, images_NHWC: np.ndarray, labels_N=None, start: int = 0,
                   suffix: str = ".png") -> list[str]:
  """Writes each image as DIR/<label>_<shape>/<index>.png (DIR/<index>.png without labels); returns the paths.

  suffix '.jpg' writes JPEGs (quality 90).
  """
  import PIL.Image  # pylint: disable=g-import-not-at-top

  paths = []
  for i, image in enumerate(images_NHWC):
    folder = directory
    if labels_N is not None:  # sorted folder names keep the label order: 000_square, 001_disc, ...
      label = int(labels_N[i])
      folder = os.path.join(directory, f"{label:03d}" + (f"_{SHAPES[label]}" if label < len(SHAPES) else ""))
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{start + i:07d}{suffix}")
    picture = PIL.Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    picture.save(path, **({"quality": 90} if suffix in (".jpg", ".jpeg") else {}))
    paths.append(path)
  return paths
