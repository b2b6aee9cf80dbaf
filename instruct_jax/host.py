"""Settings of the host process that the programs (trainer, benchmarks) apply before JAX starts.

`keep_freed_memory()` stops glibc's malloc from handing freed memory back to the operating system.
XLA's CPU runtime allocates each step's activations and gradients afresh and frees them at the end of the
step; with glibc's defaults every large buffer is a new mapping (or a heap that is trimmed when freed), so
the kernel faults in and zeroes every page again on the next step (the page faults and kernel time it saves:
BENCHMARKS.md, "Train step"). The cost is that the process keeps its peak memory until it exits, and that the kept
heap fragments: buffers of one step rarely fit the holes the last one left, so the heap grows for a few steps, and
a real model's run holds several times its working memory (BENCHMARKS.md, "Fine-tuning a real checkpoint on
CPU"); so the trainer applies it only when asked (--keep_freed_memory), and benchmarks/train_step.py by default.

It must run before the first JAX computation: malloc gives each new thread its own arena, and the arena
limit below only reaches threads that have not allocated yet (XLA's thread pools start with the backend).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

from absl import logging

# mallopt(3) parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1  # -1 as the value: never give the top of the heap back
_M_MMAP_MAX = -4  # 0: no allocation gets its own mapping (those are unmapped on free)
_M_ARENA_MAX = -8  # 1: every thread allocates from the main heap, so the two settings above reach them


@functools.cache
def keep_freed_memory() -> bool:
  """Make glibc malloc keep and reuse freed memory. Returns False where there is no glibc (no effect).

  Idempotent. Call it at the start of a program, before JAX runs anything.
  """
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    logging.info("keep_freed_memory: not a glibc system; malloc left as it is")
    return False
  libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
  for param, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)):
    if libc.mallopt(param, value) != 1:  # mallopt returns 1 on success; a speed setting, so only warn
      logging.warning("keep_freed_memory: mallopt(%d, %d) failed (errno %d)", param, value, ctypes.get_errno())
      return False
  return True
