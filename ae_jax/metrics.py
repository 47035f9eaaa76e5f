"""Metric sinks in the workdir: metrics.jsonl (one object per record) and TensorBoard events."""

import json
import os
import queue
import sys

from absl import logging
import jax
import numpy as np


def _plain(v):
  return v.item() if isinstance(v, np.generic | np.ndarray) else v


# Eval names before 2026-11-25 -> now (eval.json and metrics.jsonl of older workdirs).
EVAL_RENAMES = {
    "test_loss": "loss", "test_mse": "recon_mse", "test_psnr": "recon_psnr",
    "denoised_mse": "recon_mse", "denoised_psnr": "recon_psnr",
    "noisy_input_mse": "corruption_mse", "noisy_input_psnr": "corruption_psnr",
    "clean_input_mse": "recon_from_clean_mse", "clean_input_psnr": "recon_from_clean_psnr",
}


def upgrade_eval(record: dict) -> dict:
  """An eval record with today's names, whatever version of ae_jax wrote it."""
  return {EVAL_RENAMES.get(k, k): v for k, v in record.items()}


class DamagedFile(ValueError):
  """A side file of a workdir (metrics.jsonl, run.json) that cannot be read; the message is one line."""


def read_jsonl(path: str, *, drop_truncated_tail: bool = False) -> list[dict]:
  """The records of a metrics.jsonl; eval records with today's names.

  drop_truncated_tail: a last line cut short (a crash or a full disk while
  appending) is dropped with a warning; the checkpoint is the truth and the
  records after it are rewritten. Any other bad line is a DamagedFile naming it.
  """
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = f.read().split("\n")
  records = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as e:
      if drop_truncated_tail and not any(rest.strip() for rest in lines[i + 1:]):
        logging.warning("%s: its last line is cut short (%s); dropping it", path, e.msg)
        break
      raise DamagedFile(f"{path}: line {i + 1} is not a JSON record ({e.msg}); fix or remove that line "
                        "(the checkpoints hold the run's state; the records after the latest one are "
                        "rewritten)") from None
  return [upgrade_eval(r) if r.get("kind") == "eval" else r for r in records]


def _summary_writer():
  """tensorboardX.SummaryWriter, imported without PyTorch.

  tensorboardX's writer imports torch whenever it is installed, only to accept torch tensors;
  the Writer logs Python floats, and the import costs ~3 s per run (before the first step) in
  an environment with torch. A torch the process has already imported is left as it is.
  """
  blocked = "torch" not in sys.modules
  if blocked:
    sys.modules["torch"] = None  # `import torch` raises ImportError while tensorboardX loads
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    if blocked:
      del sys.modules["torch"]  # a later `import torch` imports it as usual
  return SummaryWriter


class Writer:
  """Appends records to WORKDIR/metrics.jsonl and WORKDIR/tensorboard.

  `kept` are the records up to the step a run resumes from (work past it is
  redone), read and checked before anything was written, so the file reads as
  one uninterrupted run.
  """

  def __init__(self, workdir: str, resume_step: int = 0, kept: list[dict] = ()):
    SummaryWriter = _summary_writer()  # pylint: disable=invalid-name

    self.path = os.path.join(workdir, "metrics.jsonl")
    _write_atomically(self.path, "".join(json.dumps(r) + "\n" for r in kept if r["step"] <= resume_step))
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
    try:
      self._tb.close()
    except OSError:
      self._abandon_tensorboard()
      raise

  def _abandon_tensorboard(self) -> None:
    """After a failed close (a full disk): stops tensorboardX's writer threads without another flush,
    so that its exit hook and its dying threads do not print the same fault again as tracebacks."""
    for w in (self._tb.all_writers or {}).values():
      events = w.event_writer
      worker = events._worker  # pylint: disable=protected-access
      events._closed = True  # pylint: disable=protected-access  # its close() and exit hook: no-ops
      if worker is not None and worker.is_alive():
        try:
          worker._queue.put(worker._shutdown_signal, timeout=5)  # pylint: disable=protected-access
        except queue.Full:
          pass
        worker.join(timeout=5)
    self._tb.file_writer = self._tb.all_writers = None


def _write_atomically(path: str, text: str) -> None:
  """Temp file + rename: a crash leaves the old file or the new one, never half of either; a failed
  write (a full disk, a signal) leaves no temp file behind."""
  tmp = path + ".tmp"
  try:
    with open(tmp, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(path: str, obj: dict) -> None:
  """Writes obj atomically (temp file + rename), so a crash never leaves half a file."""
  _write_atomically(path, json.dumps(obj, indent=2, sort_keys=True, default=_plain) + "\n")


def relative_distance(a, b) -> float:
  """Relative L2 distance |a - b| / |b| between two pytrees of arrays, in float64."""
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  num = sum(float(np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2))
            for x, y in zip(la, lb, strict=True))
  den = sum(float(np.sum(np.asarray(y, np.float64) ** 2)) for y in lb)
  return (num / den) ** 0.5
