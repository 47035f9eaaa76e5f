"""Reads the next compiled calls' batches on a host thread while the devices run the current one."""

import collections
import concurrent.futures
import time


def prefetch(read, items, depth: int = 2, on_wait=None):
  """Yields (item, read(item)) in order, reading up to `depth` items ahead on one thread.

  What each item reads depends on the item alone (the sampler's indices), so
  reading ahead changes no value, only when it is ready. on_wait(seconds) is
  told how long each item kept the caller waiting (the loop's data wait).
  """
  pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ae_jax_prefetch")
  queue = collections.deque()
  items = iter(items)
  try:
    for item in items:
      queue.append((item, pool.submit(read, item)))
      if len(queue) >= depth:
        break
    while queue:
      item, future = queue.popleft()
      started = time.perf_counter()
      value = future.result()
      if on_wait is not None:
        on_wait(time.perf_counter() - started)
      nxt = next(items, None)
      if nxt is not None:
        queue.append((nxt, pool.submit(read, nxt)))
      yield item, value
  finally:
    pool.shutdown(wait=True, cancel_futures=True)
