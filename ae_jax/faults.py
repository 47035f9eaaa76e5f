"""Faults of the machine rather than of the run: no space, a read-only or vanished filesystem, an I/O
error. Each becomes one `EnvironmentFault`, one line and one exit code, wherever it struck."""

import asyncio
import errno

ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
          errno.EROFS: "read-only file system", errno.EIO: "input/output error",
          errno.ESTALE: "stale file handle (the filesystem went away)", errno.ENODEV: "no such device",
          errno.ENOTCONN: "transport endpoint is not connected (the filesystem went away)"}
# How the same faults read when a library reports them as text (tensorstore under Orbax: ValueError).
PHRASES = {"No space left on device": ERRNOS[errno.ENOSPC], "RESOURCE_EXHAUSTED": ERRNOS[errno.ENOSPC],
           "Disk quota exceeded": ERRNOS[errno.EDQUOT], "Read-only file system": ERRNOS[errno.EROFS],
           "Input/output error": ERRNOS[errno.EIO], "Stale file handle": ERRNOS[errno.ESTALE],
           "Transport endpoint is not connected": ERRNOS[errno.ENOTCONN]}


def first_line(e: BaseException, limit: int = 300) -> str:
  """An exception's message cut to its first line (or its type's name), for a one-line error."""
  return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]


class EnvironmentFault(OSError):
  """The machine failed a read or write (space, a read-only or vanished filesystem, I/O); one line."""


def describe(e: BaseException) -> str | None:
  """What environment fault e (or an exception it was raised from) is, or None if it is none."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, EnvironmentFault):
      return str(e)
    if isinstance(e, OSError) and e.errno in ERRNOS:
      return ERRNOS[e.errno]
    text = str(e)
    for phrase, what in PHRASES.items():
      if phrase in text:
        return what
    e = e.__cause__ or e.__context__
  return None


def drop_callbacks_to_closed_loops() -> None:
  """Makes a callback scheduled on a closed asyncio loop a no-op instead of a printed traceback.

  When an Orbax save or restore fails (a full disk, a truncated file), it closes its
  event loop while tensorstore still has reads or writes in flight; each of them
  then calls loop.call_soon_threadsafe from a C++ thread, which raises "Event loop is
  closed", and tensorstore prints every one: 22-86 tracebacks above the one line
  that says what happened. Nobody is left to run such a callback, so dropping it
  loses nothing. Process-wide; the entry points call it.
  """
  original = asyncio.BaseEventLoop.call_soon_threadsafe
  if getattr(original, "_ae_jax_drops_closed", False):
    return

  def call_soon_threadsafe(self, callback, *args, context=None):
    if self.is_closed():
      return None
    return original(self, callback, *args, context=context)

  call_soon_threadsafe._ae_jax_drops_closed = True
  asyncio.BaseEventLoop.call_soon_threadsafe = call_soon_threadsafe


def quiet_background_faults() -> None:
  """A background thread that dies of an environment fault (tensorboardX's event writer on a full disk)
  logs one line instead of a traceback; the main thread reports the fault itself. Process-wide."""
  import threading  # pylint: disable=g-import-not-at-top

  from absl import logging  # pylint: disable=g-import-not-at-top

  original = threading.excepthook
  if getattr(original, "_ae_jax_quiet", False):
    return

  def hook(args):
    fault = describe(args.exc_value) if args.exc_value is not None else None
    if fault is None:
      return original(args)
    logging.warning("thread %s stopped: %s", getattr(args.thread, "name", "?"), fault)
    return None

  hook._ae_jax_quiet = True
  threading.excepthook = hook
