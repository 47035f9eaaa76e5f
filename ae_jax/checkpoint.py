"""Orbax checkpoints of everything a run needs to continue: train state, data position, config."""

import os

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp


def manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  """A manager over WORKDIR/checkpoints keeping the last `keep` steps (saves are async)."""
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
  )


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
  """Saves host `state` (numpy leaves, unreplicated) and JSON `meta` at `step`."""
  state = jax.tree.map(np.asarray, state)
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          meta=ocp.args.JsonSave(meta)))


def restore_latest(mngr: ocp.CheckpointManager, target):
  """(state, meta) of the latest checkpoint shaped like host `target`, or None if there is none."""
  step = mngr.latest_step()
  if step is None:
    return None
  target = jax.tree.map(np.asarray, target)
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                        meta=ocp.args.JsonRestore()))
  logging.info("restored checkpoint at step %d from %s", step, mngr.directory)
  return restored.state, restored.meta
