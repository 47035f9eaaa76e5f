"""Metric sinks in the workdir: metrics.jsonl (one object per record) and TensorBoard events."""

import json
import os

import numpy as np


def _plain(v):
  return v.item() if isinstance(v, np.generic | np.ndarray) else v


def read_jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class Writer:
  """Appends records to WORKDIR/metrics.jsonl and WORKDIR/tensorboard.

  Resuming at `resume_step` drops records past it (work that is redone), so the
  file reads as one uninterrupted run.
  """

  def __init__(self, workdir: str, resume_step: int = 0):
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

    self.path = os.path.join(workdir, "metrics.jsonl")
    kept = [r for r in read_jsonl(self.path) if r["step"] <= resume_step]
    with open(self.path, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                             purge_step=resume_step + 1 if resume_step else None)

  def write(self, step: int, kind: str, scalars: dict) -> None:
    record = {"step": int(step), "kind": kind, **{k: _plain(v) for k, v in scalars.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    for k, v in scalars.items():
      v = _plain(v)
      if isinstance(v, int | float):
        self._tb.add_scalar(f"{kind}/{k}", v, step)

  def close(self) -> None:
    self._tb.close()


def write_json(path: str, obj: dict) -> None:
  """Writes obj atomically (temp file + rename), so a crash never leaves half a file."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=_plain)
    f.write("\n")
  os.replace(tmp, path)
