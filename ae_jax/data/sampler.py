"""Which examples each step takes: a function of (seed, epoch, step) alone, so a resume needs no state."""

import dataclasses

import jax
import numpy as np


def epoch_order(key: jax.Array, epoch: int, n: int) -> np.ndarray:
  """The order of the n training examples in `epoch`: a function of (key, epoch) only."""
  return np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), n))


def padded_batches(split, batch_size: int):
  """Yields (start, batch, valid): fixed-size batches of a split (or array), the last one zero-padded.

  One shape for every batch means one compilation; rows past `valid` are padding.
  """
  n = len(split)
  batch_size = min(batch_size, n)
  for start in range(0, n, batch_size):
    chunk = np.asarray(split[start:start + batch_size])
    valid = len(chunk)
    if valid < batch_size:
      chunk = np.concatenate([chunk, np.zeros((batch_size - valid, *chunk.shape[1:]), chunk.dtype)])
    yield start, chunk, valid


@dataclasses.dataclass(frozen=True)
class Call:
  """One compiled call: steps start+1 .. end of `epoch`, and the examples each step takes."""

  start: int
  end: int
  epoch: int
  epoch_done: bool
  indices_KB: np.ndarray  # int32: row k holds step start+k+1's global batch


class Schedule:
  """The compiled calls of a run, a function of the position alone.

  A call holds K = steps_per_call steps, cut at the epoch's end; the examples of
  an epoch are in epoch_order(data_key, epoch). A run resumed at any call end
  therefore runs exactly the calls an uninterrupted run does.
  """

  def __init__(self, data_key: jax.Array, num_train: int, batch_size: int, num_epochs: int,
               steps_per_call: int):
    self.data_key, self.num_train, self.batch_size = data_key, num_train, batch_size
    self.steps_per_epoch = num_train // batch_size  # the remainder is dropped; each epoch reshuffles
    self.total_steps = num_epochs * self.steps_per_epoch
    self.steps_per_call = steps_per_call

  def end_of_call(self, start: int) -> int:
    epoch_start = start // self.steps_per_epoch * self.steps_per_epoch
    pos = start - epoch_start
    return epoch_start + min(self.steps_per_epoch, (pos // self.steps_per_call + 1) * self.steps_per_call)

  def calls(self, start: int):
    """Yields the Calls from step `start` to the end of the run."""
    epoch, order = -1, None
    while start < self.total_steps:
      end = self.end_of_call(start)
      if start // self.steps_per_epoch != epoch:
        epoch = start // self.steps_per_epoch
        order = epoch_order(self.data_key, epoch, self.num_train)
      first = start - epoch * self.steps_per_epoch
      idx = order[first * self.batch_size:(end - epoch * self.steps_per_epoch) * self.batch_size]
      yield Call(start, end, epoch, end % self.steps_per_epoch == 0,
                 idx.reshape(end - start, self.batch_size).astype(np.int32))
      start = end
