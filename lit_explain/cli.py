"""The lit_explain command line: LightningCLI in subclass mode.

``python trainer_cli.py fit|validate|test|predict --config configs/<x>.yaml`` (or the ``lit-explain``
console script). Any LightningModule / LightningDataModule can be named by ``class_path``; the packages of
this project are imported first so that their classes can also be named by class name alone.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningCLI

#: Packages whose modules are imported before parsing, so their classes resolve by short name.
_PLUGIN_PACKAGES = ("lit_explain.methods", "data_modules", "callbacks")
#: Loggers of this project, shown on stderr at ``--log_level`` (progress of long searches, cache hits, outputs).
_PROJECT_LOGGERS = ("lit_explain", "data_modules", "callbacks")


def _import_plugins() -> None:
    for pkg_name in _PLUGIN_PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{pkg_name}.{info.name}")


class ExplainCLI(LightningCLI):
    """LightningCLI with the project's defaults: saved configs may be overwritten, seeding is on, and the project's
    log messages are shown at ``--log_level``."""

    def add_arguments_to_parser(self, parser) -> None:  # noqa: D401 - LightningCLI hook
        parser.set_defaults({"trainer.logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                                                "init_args": {"save_dir": "outputs/tensorboard"}}})
        parser.add_argument("--log_level", type=str, default="INFO",
                            help="level of lit_explain's messages on stderr (progress of the searches, caches, outputs)")

    def before_instantiate_classes(self) -> None:  # noqa: D401 - LightningCLI hook
        config = self.config[self.subcommand] if self.subcommand else self.config
        configure_logging(config.get("log_level", "INFO"))


def configure_logging(level: str | int = "INFO") -> None:
    """Show this project's log records at ``level`` on stderr.

    A handler is added only when the application has configured no root handler (as Lightning does for its own
    logger), so an application or test harness that routes logging itself still receives the records through
    propagation, and repeated in-process runs do not stack handlers.
    """
    level = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(level, int):
        raise ValueError(f"unknown log level {level!r}; use DEBUG, INFO, WARNING or ERROR")
    for name in _PROJECT_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        ours = [h for h in logger.handlers if getattr(h, "_lit_explain", False)]
        if not logging.getLogger().handlers and not ours:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", datefmt="%H:%M:%S"))
            handler._lit_explain = True  # type: ignore[attr-defined]
            logger.addHandler(handler)


def main(args: ArgsType = None) -> ExplainCLI:
    """Run the CLI; ``args`` (a list of strings) lets tests call it in-process."""
    _import_plugins()
    return ExplainCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )
