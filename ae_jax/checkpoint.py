"""Orbax checkpoints of everything a run needs to continue: train state, data position, config.

Orbax commits a checkpoint atomically but checks no content, so each one's meta
holds a CRC-32 of every array, written with it and verified on restore: a flipped
bit or a truncated file makes the checkpoint unreadable, and the one before it is
used.
"""

import os
import shutil
import zlib

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from ae_jax import faults

META_KEYS = ("step", "steps_per_epoch", "batch_size", "log_window", "config")


class CheckpointError(RuntimeError):
  """No checkpoint in a workdir that has some could be restored; the message is one line."""


def manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  """A manager over WORKDIR/checkpoints keeping the last `keep` steps.

  Saves are async and atomic (written to a temp dir, renamed when complete), so a
  save cut short never hides the previous checkpoint; leftover temp dirs are
  removed when the manager opens.
  """
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           cleanup_tmp_directories=True),
  )


def _finite(tree) -> bool:
  return all(np.all(np.isfinite(x)) for x in jax.tree.leaves(tree)
             if np.issubdtype(np.asarray(x).dtype, np.floating))


def digests(state) -> dict[str, str]:
  """{array path: 'crc32:<hex>'} of every leaf of a host state (numpy arrays)."""
  out = {}
  for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
    x = np.ascontiguousarray(x)
    out[jax.tree_util.keystr(path)] = f"crc32:{zlib.crc32(memoryview(x).cast('B')) if x.size else 0:08x}"
  return out


def latest_saved(mngr: ocp.CheckpointManager) -> str:
  """'step N' of the newest finished checkpoint, or 'none yet', for a message."""
  mngr.wait_until_finished()
  step = mngr.latest_step()
  return "none yet: a rerun starts from scratch" if step is None else f"step {step}"


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
  """Saves host `state` (numpy leaves, unreplicated) and JSON `meta` at `step`, with the state's digests.

  Refused before anything is written when the state is not finite, or when the
  disk has no room for it (a save that runs out of space half way leaves
  nothing to restore, and Orbax's error comes late and noisy).
  """
  state = jax.tree.map(np.asarray, state)
  if not _finite(state):
    raise FloatingPointError(f"refusing to save step {step}: the state has non-finite values "
                             f"(last checkpoint: {latest_saved(mngr)})")
  need = int(1.1 * sum(x.nbytes for x in jax.tree.leaves(state))) + 2**20
  free = shutil.disk_usage(mngr.directory).free
  if free < need:
    raise faults.EnvironmentFault(
        f"no space left on device for the checkpoint of step {step} in {mngr.directory}: it needs about "
        f"{need / 2**20:.1f} MiB and {free / 2**20:.1f} MiB are free (last checkpoint: {latest_saved(mngr)})")
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          meta=ocp.args.JsonSave({**meta, "digests": digests(state)})))


def restore_latest(mngr: ocp.CheckpointManager, target, check_meta=None):
  """(state, meta, unreadable_steps) of the newest readable checkpoint, or None if there is none.

  The state is shaped like host `target`. check_meta(meta) runs before the state
  is read and may raise (an incompatible run); that error propagates. An
  unreadable or inconsistent checkpoint is reported and the one before it tried;
  the steps passed over are returned (see set_aside). If none is readable,
  CheckpointError.
  """
  target = jax.tree.map(np.asarray, target)
  problems = []
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
      missing = [k for k in META_KEYS if k not in (meta or {})]
      if missing:
        raise ValueError(f"metadata lacks {missing}")
    except Exception as e:  # pylint: disable=broad-except
      problems.append(_report(mngr, step, e))
      continue
    if check_meta is not None:
      check_meta(meta)
    try:
      state = mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target))).state
      if int(state.step) != step or meta["step"] != step:
        raise ValueError(f"holds step {int(state.step)}/{meta['step']}, not {step}")
      if not _finite(state):
        raise ValueError("non-finite values")
      saved = meta.get("digests")  # checkpoints written before digests have none to check
      if saved is not None:
        bad = [k for k, v in digests(state).items() if saved.get(k) != v]
        if bad:
          raise ValueError(f"array {bad[0]} does not match its checksum"
                           + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    except Exception as e:  # pylint: disable=broad-except
      problems.append(_report(mngr, step, e))
      continue
    logging.info("restored checkpoint at step %d from %s", step, mngr.directory)
    return state, meta, [int(p.split(":")[0].split()[1]) for p in problems]
  if problems:
    raise CheckpointError(f"no readable checkpoint in {mngr.directory}: " + "; ".join(problems))
  return None


def set_aside(workdir: str, steps) -> None:
  """Moves unreadable checkpoints to WORKDIR/checkpoints_unreadable/ (kept for inspection).

  Out of the manager's way, the steps they held can be saved again.
  """
  dest = os.path.join(workdir, "checkpoints_unreadable")
  for step in steps:
    os.makedirs(dest, exist_ok=True)
    target = os.path.join(dest, str(step))
    suffix = 1
    while os.path.exists(target):
      target, suffix = os.path.join(dest, f"{step}.{suffix}"), suffix + 1
    shutil.move(os.path.join(workdir, "checkpoints", str(step)), target)
    logging.warning("moved unreadable checkpoint %d to %s", step, target)


def _report(mngr, step: int, e: Exception) -> str:
  reason = faults.first_line(e)
  logging.warning("checkpoint at step %d in %s is unreadable (%s); trying an older one",
                  step, mngr.directory, reason)
  return f"step {step}: {reason}"


def latest_meta(workdir: str) -> dict | None:
  """The JSON meta of WORKDIR's latest checkpoint, or None if there is none or it is unreadable.

  Cheap (no arrays are read): for checks before any work; restore_latest reads
  and verifies the full checkpoint later.
  """
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return None
  mngr = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")))
  try:
    step = mngr.latest_step()
    meta = None if step is None else mngr.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    return meta if isinstance(meta, dict) and all(k in meta for k in META_KEYS) else None
  except Exception:  # pylint: disable=broad-except
    return None  # an unreadable latest checkpoint: restore_latest reports it and tries older ones
  finally:
    mngr.close()


def read_latest(workdir: str):
  """(step, state, meta) of WORKDIR's latest checkpoint as saved (nested dicts of numpy arrays)."""
  mngr = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")))
  try:
    step = mngr.latest_step()
    if step is None:
      raise CheckpointError(f"no checkpoint in {mngr.directory}")
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                          meta=ocp.args.JsonRestore()))
    return step, jax.tree.map(np.asarray, restored.state), restored.meta
  finally:
    mngr.close()
