"""Lightning callbacks: metrics (torchmetrics, DDP-synced) and writers.

:func:`default_callbacks` says which callbacks a method's run gets unless the configuration already has them:
every method's result goes through :class:`~callbacks.result_writer.ResultWriter`, and a method with metrics of
its own registers their callback here with :func:`register_default_callbacks`. The CLI adds them; the methods
never import this package (the core library does not depend on its writers).
"""

from __future__ import annotations

from typing import Callable

from lightning.pytorch import Callback, LightningModule

__all__ = ["default_callbacks", "register_default_callbacks"]

_REGISTRY: list[tuple[type, Callable[[], Callback]]] = []


def register_default_callbacks(method: type, *factories: Callable[[], Callback]) -> None:
    """Runs of ``method`` (and its subclasses) get these callbacks unless the trainer already has one of the type."""
    for f in factories:
        _REGISTRY.append((method, f))


def default_callbacks(module: LightningModule | type, present: list[Callback] | tuple = ()) -> list[Callback]:
    """New instances of the default callbacks of a run of ``module`` (a method or its class) that are not already
    among ``present`` (by type)."""
    import importlib
    import pkgutil

    from callbacks.result_writer import ResultWriter

    for info in pkgutil.iter_modules(__path__):  # each module registers its defaults on import
        importlib.import_module(f"{__name__}.{info.name}")
    have = [type(c) for c in present]
    out: list[Callback] = []
    for method, factory in [(LightningModule, ResultWriter), *_REGISTRY]:
        if not (issubclass(module, method) if isinstance(module, type) else isinstance(module, method)):
            continue
        cb = factory()
        if not any(issubclass(h, type(cb)) for h in have + [type(o) for o in out]):
            out.append(cb)
    return out
