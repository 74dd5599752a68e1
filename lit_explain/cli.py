"""The lit_explain command line: LightningCLI in subclass mode.

``python trainer_cli.py fit|validate|test|predict --config configs/<x>.yaml`` (or the ``lit-explain``
console script). Any LightningModule / LightningDataModule can be named by ``class_path``; the packages of
this project are imported first so that their classes can also be named by class name alone.
"""

from __future__ import annotations

import importlib
import pkgutil

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningCLI

#: Packages whose modules are imported before parsing, so their classes resolve by short name.
_PLUGIN_PACKAGES = ("lit_explain.methods", "data_modules", "callbacks")


def _import_plugins() -> None:
    for pkg_name in _PLUGIN_PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{pkg_name}.{info.name}")


class ExplainCLI(LightningCLI):
    """LightningCLI with the project's defaults: saved configs may be overwritten and seeding is on."""

    def add_arguments_to_parser(self, parser) -> None:  # noqa: D401 - LightningCLI hook
        parser.set_defaults({"trainer.logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                                                "init_args": {"save_dir": "outputs/tensorboard"}}})


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
