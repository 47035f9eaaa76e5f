"""The train metrics since the last progress line: a window that survives a restart."""

import time

import numpy as np


class LogWindow:
  """Train metrics since the last log line; survives a restart through the checkpoint's meta."""

  def __init__(self, steps: int = 0, sums: dict | None = None):
    self.steps, self.sums = steps, dict(sums or {})
    self.restart_clock()

  def restart_clock(self) -> None:
    """Throughput counts from now (after compiling, evaluating or restoring)."""
    self._t, self._timed, self._waited = time.perf_counter(), 0, 0.0

  def add_wait(self, seconds: float) -> None:
    """Time the loop waited for the host to read a call's batches."""
    self._waited += seconds

  def add(self, metrics_K: dict) -> None:
    """Adds K steps' metrics (numpy [K] each)."""
    k = len(next(iter(metrics_K.values())))
    self.steps += k
    self._timed += k
    for name, v in metrics_K.items():
      self.sums[name] = self.sums.get(name, 0.0) + float(np.sum(v, dtype=np.float64))

  def flush(self) -> tuple[dict, float, float]:
    """(mean of each metric as 'train_<name>', steps/s, the fraction of the time spent waiting for
    data), and an empty window."""
    means = {f"train_{name}": s / self.steps for name, s in self.sums.items()}
    elapsed = time.perf_counter() - self._t
    rate, waited = self._timed / elapsed, self._waited / elapsed
    self.__init__()
    return means, rate, waited

  def to_meta(self) -> dict:
    return {"steps": self.steps, "sums": dict(self.sums)}

  @classmethod
  def from_meta(cls, meta: dict) -> "LogWindow":
    return cls(meta["steps"], meta["sums"])
