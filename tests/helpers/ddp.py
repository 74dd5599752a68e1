"""Run functions in N CPU processes with a gloo process group (torchmetrics-style DDP unit tests).

Starting processes is the expensive part of a two-process test (each imports torch and builds a process group), so
the processes are started once per test session and reused: :func:`run_distributed` sends the function and its
arguments to every rank of a pool of ``world`` spawned workers, which keep one process group for the whole session,
and returns what each rank returned. An exception on a rank is raised in the caller with that rank's traceback.
Functions must be picklable module-level functions; they must not destroy the process group.
"""

from __future__ import annotations

import atexit
import os
import socket
import traceback
from typing import Any, Callable

import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["free_port", "run_distributed"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, inbox, outbox) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        while True:
            job = inbox.get()
            if job is None:
                break
            fn, args = job
            try:
                outbox.put((rank, True, fn(rank, world, *args)))
            except BaseException:  # noqa: BLE001 - reported to the caller, the worker stays usable
                outbox.put((rank, False, traceback.format_exc()))
    finally:
        dist.destroy_process_group()


class _Pool:
    def __init__(self, world: int) -> None:
        ctx = mp.get_context("spawn")
        self.world = world
        self.outbox = ctx.Queue()
        self.inboxes = [ctx.Queue() for _ in range(world)]
        port = free_port()
        self.procs = [ctx.Process(target=_worker, args=(r, world, port, self.inboxes[r], self.outbox), daemon=True)
                      for r in range(world)]
        for p in self.procs:
            p.start()

    def alive(self) -> bool:
        return all(p.is_alive() for p in self.procs)

    def run(self, fn: Callable, args: tuple, timeout: float) -> list[Any]:
        for q in self.inboxes:
            q.put((fn, args))
        results = {}
        for _ in range(self.world):
            rank, ok, value = self.outbox.get(timeout=timeout)
            results[rank] = (ok, value)
        failed = [f"rank {r}:\n{v}" for r, (ok, v) in sorted(results.items()) if not ok]
        if failed:
            raise AssertionError("a rank raised:\n" + "\n".join(failed))
        return [results[r][1] for r in range(self.world)]

    def close(self) -> None:
        for q in self.inboxes:
            q.put(None)
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()


_POOLS: dict[int, _Pool] = {}


def _pool(world: int) -> _Pool:
    pool = _POOLS.get(world)
    if pool is None or not pool.alive():
        if pool is not None:
            pool.close()
        pool = _POOLS[world] = _Pool(world)
    return pool


@atexit.register
def _close_pools() -> None:
    for pool in _POOLS.values():
        pool.close()
    _POOLS.clear()


def run_distributed(fn: Callable, world: int = 2, *args: Any, timeout: float = 180) -> list[Any]:
    """Return ``[fn(rank, world, *args) for each rank]``, computed by the session's pool of ``world`` processes.

    A failure kills no process: the pool stays up for the next test. A pool whose process died (e.g. a segfault)
    is replaced by a fresh one.
    """
    return _pool(world).run(fn, args, timeout)
