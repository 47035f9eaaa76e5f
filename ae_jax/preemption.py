"""SIGTERM/SIGINT/SIGHUP become one stop point that every process of a run agrees on.

A signal sets a flag; the loop asks `stop.due(calls)` after every compiled call
and, once it says yes, checkpoints and raises `Preempted`. With one process the
stop is due at the next call. With several (jax.distributed) a signal may reach
only one of them, and the checkpoint is a collective, so all must stop at the
same call. The protocol is that of XLA's PreemptionSyncManager (behind
`multihost_utils.reached_preemption_sync_point`, which only listens for
SIGTERM): the signalled process posts a request in the coordination service's
key-value store; a watcher thread in every process sees it, posts how many calls
its loop has dispatched, and reads everyone's count; the stop is at the
largest count + 1, a call no process has dispatched yet. The watcher works
while the loop is blocked on the device, so no process waits on one that
waits on it.

Work after a checkpoint (an eval, pictures) runs `interruptible(stop_now)`:
nothing of it is lost to a signal (the rerun redoes it from the checkpoint), so
in a single-process run a signal there calls stop_now, which waits for the
checkpoint and ends the process in one line, and a signal during a
minutes-long final eval ends the run in seconds. It does not raise into the
interrupted code: an exception unwound through JAX or scikit-learn calls in
flight has crashed the interpreter at exit (SIGSEGV). With several processes
the eval runs to its end and all stop at the agreed call, as in training.
"""

import contextlib
import signal
import threading

from absl import logging
import jax
from jax._src import distributed

_PREFIX = "ae_jax/stop"
_POLL_S = 0.2
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # SIGHUP: the terminal closed


class Preempted(Exception):
  """Training stopped on a signal after checkpointing the current step."""

  def __init__(self, signum: int, step: int, directory: str, redo: str = ""):
    self.signum, self.step = signum, step
    super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}: checkpoint saved "
                     f"in {directory}; rerun the same command to continue{redo}")


class Interrupted(Exception):
  """A signal that arrived before interruptible() work began."""

  def __init__(self, signum: int):
    self.signum = signum
    super().__init__(signal.Signals(signum).name)


class StopOnSignal:
  """Context manager: SIGTERM/SIGINT/SIGHUP -> a stop point agreed by all processes; a second signal
  aborts."""

  def __init__(self, timeout_s: float = 60.0):
    self.signum = None  # the signal that stops the run (this process's, or a peer's)
    self._local = threading.Event()
    self._old = {}
    self._client = distributed.global_state.client if jax.process_count() > 1 else None
    self._timeout_ms = int(timeout_s * 1000)
    self._lock = threading.Lock()
    self._calls = 0
    self._stop_at = None
    self._closed = threading.Event()
    self._watcher = None
    self._stop_now = None

  def _handle(self, signum, frame):
    if self._local.is_set():  # asked twice: stop now, without the checkpoint
      signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
      raise KeyboardInterrupt
    self.signum = signum
    self._local.set()
    if self._stop_now is not None:
      logging.warning("received %s: stopping now (the rerun redoes this from the checkpoint)",
                      signal.Signals(signum).name)
      self._stop_now(signum)  # does not return
    logging.warning("received %s: stopping after the current call and checkpointing",
                    signal.Signals(signum).name)

  @contextlib.contextmanager
  def interruptible(self, stop_now):
    """Work the rerun can redo from the last checkpoint: a signal during it calls stop_now(signum),
    which must end the process; one that came already raises Interrupted here.

    With several processes it is ordinary work: they stop together at the agreed call.
    """
    if self._client is not None:
      yield
      return
    if self.signum is not None:
      raise Interrupted(self.signum)
    self._stop_now = stop_now
    try:
      yield
    finally:
      self._stop_now = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in SIGNALS:
        self._old[s] = signal.signal(s, self._handle)
    if self._client is not None:
      self._watcher = threading.Thread(target=self._watch, name="ae_jax-stop-watcher", daemon=True)
      self._watcher.start()
    return self

  def __exit__(self, *exc):
    self._closed.set()
    if self._watcher is not None:
      self._watcher.join(timeout=self._timeout_ms / 1000)
    for s, old in self._old.items():
      signal.signal(s, old)

  def due(self, calls: int) -> bool:
    """Whether to stop (checkpoint and exit) now that `calls` compiled calls have been dispatched."""
    if self._client is None:
      return self.signum is not None
    with self._lock:  # held by the watcher while the stop point is computed
      self._calls = calls
      return self._stop_at is not None and calls >= self._stop_at

  def _watch(self):
    """Posts this process's signal; on anyone's, agrees on the stop point (max calls + 1)."""
    client, me, n = self._client, jax.process_index(), jax.process_count()
    while True:
      closing = self._closed.is_set()  # a request seen while closing still gets this count
      if self._local.wait(0 if closing else _POLL_S):
        try:
          client.key_value_set(f"{_PREFIX}/request", str(self.signum))
        except Exception:  # pylint: disable=broad-except
          pass  # another process asked first
      try:
        request = client.key_value_try_get(f"{_PREFIX}/request")
      except Exception:  # pylint: disable=broad-except
        request = None  # not posted (NOT_FOUND)
      if request is None:
        if closing:
          return
        continue
      with self._lock:
        self.signum = self.signum or int(request)
        client.key_value_set(f"{_PREFIX}/calls/{me}", str(self._calls))
        counts = [int(client.blocking_key_value_get(f"{_PREFIX}/calls/{i}", self._timeout_ms))
                  for i in range(n)]
        self._stop_at = max(counts) + 1
      logging.warning("stop requested (%s): all %d processes stop after call %d",
                      signal.Signals(self.signum).name, n, self._stop_at)
      return
