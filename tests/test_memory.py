"""release_free_memory: the C allocator's free heap memory goes back to the system."""

import subprocess
import sys
import textwrap

import pytest

# a fresh process fills 60 MB of heap blocks (100 kB, under glibc's 128 kB mmap threshold), frees all but the
# last (which pins the heap's top, so free() cannot shrink it), and reports its anonymous memory (kB) before and
# after the call
_PROBE = textwrap.dedent(r"""
    import ctypes, re
    from lit_explain.memory import release_free_memory
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    anon = lambda: int(re.search(r"RssAnon:\s+(\d+)", open("/proc/self/status").read()).group(1))
    blocks = [libc.malloc(100_000) for _ in range(600)]
    for b in blocks:
        ctypes.memset(b, 1, 100_000)
    for b in blocks[:-1]:
        libc.free(b)
    before = anon()
    released = release_free_memory()
    print(int(released), before, anon())
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc on Linux only")
def test_free_heap_memory_goes_back_to_the_system():
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    released, before, after = (int(x) for x in out.stdout.split())
    if not released and before - after < 1000:
        pytest.skip("not glibc")
    assert released and before - after > 40_000  # most of the ~60 MB freed inside the heap
