"""Handing the C allocator's free memory back to the system during long loops (glibc on Linux).

Every predict batch allocates and frees buffers of a few hundred kB to a few tens of MB (decoded images, the
collated batch, each layer's outputs, activations and their float16 copies). glibc's malloc keeps freed memory
in its heap for reuse and returns it to the system only from the heap's top; with its dynamic mmap threshold
(raised to the size of each freed mapping, up to 32 MB), batch-sized buffers end up in that heap. Measured on
NetDissect's predict loop (1,000 Broden-format images, ResNet-18): in one of three runs the allocator ended the
capture holding 571 MB free (``mallinfo2``; 205 MB in use, as in the other runs), and in a 4,000-image run the
process grew ~575 kB per image this way, an apparent per-image growth that no structure of the program held.

:func:`release_free_memory` (glibc's ``malloc_trim(0)``) returns the free pages inside the heap too. The predict
loop calls it every :data:`TRIM_EVERY` batches and the phases that free a lot call it when they end; measured at
no visible cost (the forward pass dominates), where pinning the mmap threshold at 1 MB instead (every buffer of a
MB or more mapped and faulted in afresh) cost 12-27 % of the capture time. Elsewhere (another C library) it does
nothing.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["TRIM_EVERY", "release_free_memory"]

#: Predict batches between two calls of :func:`release_free_memory` in the base predict loop.
TRIM_EVERY = 8

_trim = None


def release_free_memory() -> bool:
    """Return the C allocator's free memory to the system (glibc ``malloc_trim(0)``). True when glibc released
    some memory, False when there was none to release or the C library is not glibc."""
    global _trim
    if _trim is None:
        _trim = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None)
                libc.gnu_get_libc_version  # noqa: B018 - glibc only: raises AttributeError elsewhere (musl)
                _trim = libc.malloc_trim
                _trim.argtypes, _trim.restype = [ctypes.c_size_t], ctypes.c_int
            except (OSError, AttributeError):
                _trim = False
    return bool(_trim(0)) if _trim else False
