"""Where a tensor's memory lives: a file mapping or the process's own (anonymous) memory."""

import torch


def mapped_file(t: torch.Tensor) -> str:
    """The file a tensor's data is memory-mapped from (per /proc/self/maps; ``(deleted)`` appended for an unlinked
    file), or '' for the process's own memory (anonymous mappings and the ``[heap]``)."""
    addr = t.data_ptr()
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= addr < hi:
                name = parts[5].strip() if len(parts) > 5 else ""
                return "" if name.startswith("[") else name
    return ""
