"""The lit_explain command line: LightningCLI in subclass mode, plus a dataset check.

``python trainer_cli.py fit|validate|test|predict --config <x>.yaml`` (or the ``lit-explain`` console script). Any
LightningModule / LightningDataModule can be named by ``class_path``; the packages of this project are imported first
so that their classes can also be named by class name alone. Beside Lightning's options:

* ``--config NAME``: a relative name that does not exist from the working directory is looked up in the
  repository's ``configs/`` folder (``--config lavise_vg.yaml`` from anywhere, ``--config templates/x.yaml``);
* ``--print_layers``: list the probe-able layers of the configured model with their output shapes, and exit;
* ``--verbose``: show what is hidden by default (Lightning's tips, deprecation warnings of the libraries, Lightning's
  "predict returned None"); the project's own progress and summary lines are always shown;
* ``--log_level``: level of the project's own messages;
* ``python trainer_cli.py check --root <folder>``: validate a Broden-format folder before a long run.

Errors: a known bad input (:mod:`lit_explain.errors`, or a missing file) is printed as one line with exit status 2 when
the command line runs (``main()`` without arguments); in-process callers (``main([...])``) receive the exception itself, also when a
class constructor raised it during argument instantiation (it is not left wrapped in the argument parser's
type-mismatch report).
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import logging
import pkgutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jsonargparse import ActionYesNo
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from lit_explain.errors import ConfigError

#: Packages whose modules are imported before parsing, so their classes resolve by short name.
_PLUGIN_PACKAGES = ("lit_explain.methods", "data_modules", "callbacks")
#: Loggers of this project, shown on stderr at ``--log_level`` (progress of long searches, cache hits, outputs).
_PROJECT_LOGGERS = ("lit_explain", "data_modules", "callbacks")
#: Where a bare ``--config`` name is looked up when it is not found from the working directory.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
#: Loggers through which Lightning emits its rank-zero info lines, its "💡 Tip" advertisements among them (the one
#: in use is whichever of its modules was imported last: lightning_utilities.core.rank_zero.log).
_LIGHTNING_INFO_LOGGERS = ("lightning.fabric.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero")
#: Module names whose own warnings are never hidden (a regex; warnings attributed elsewhere are dependencies').
_OWN_MODULES = r"(?!(lit_explain|data_modules|callbacks|trainer_cli|tests)\b)"

_VERBOSE_HELP = ("also show Lightning's tips, deprecation warnings of the libraries and Lightning's 'predict returned "
                 "None' (hidden by default), and the traceback of an input error")
#: Subcommands whose --verbose is this CLI's (validate and test have the Trainer's).
_OWN_VERBOSE: set[str] = set()
_DESCRIPTION = (
    "Explain what the units of a vision network detect. Run a method with "
    "`python trainer_cli.py predict|fit --config <file>.yaml`; a config name not found in the working directory is "
    f"looked up in {CONFIG_DIR}. Validate a Broden-format dataset folder with "
    "`python trainer_cli.py check --root <folder>`."
)
_CONFIG_HELP = (
    "Path to a configuration file in yaml or json format. A relative name that does not exist from the working "
    "directory is looked up in the repository's configs/ folder (e.g. --config lavise_vg.yaml, "
    "--config templates/netdissect.yaml; the .yaml suffix may be left out)."
)


def _import_plugins() -> None:
    for pkg_name in _PLUGIN_PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{pkg_name}.{info.name}")


# ----------------------------------------------------------------------------------------------------------------------
# Quiet runs
# ----------------------------------------------------------------------------------------------------------------------
class _DropTips(logging.Filter):
    """Drops Lightning's "💡 Tip: ..." advertisements (installing litlogger, litmodels)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


_DROP_TIPS = _DropTips()


def _info_loggers() -> list[logging.Logger]:
    import lightning_utilities.core.rank_zero as rank_zero

    loggers = [logging.getLogger(name) for name in _LIGHTNING_INFO_LOGGERS]
    return loggers + [rank_zero.log] if rank_zero.log not in loggers else loggers


def _noise_filters(action: str) -> None:
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings(action, category=category, module=_OWN_MODULES)
    # the dissection methods collect their results in predict_step and return None on purpose
    warnings.filterwarnings(action, message="predict returned None")


def _hide_noise() -> None:
    """Hide Lightning's tips, dependencies' deprecation warnings and "predict returned None" (until restored)."""
    for logger in _info_loggers():
        logger.addFilter(_DROP_TIPS)
    _noise_filters("ignore")


def _show_noise(warnings_too: bool = False) -> None:
    """Show the tips again; with ``warnings_too`` also the warnings (filters put in front of the hiding ones)."""
    for logger in _info_loggers():
        logger.removeFilter(_DROP_TIPS)
    if warnings_too:
        _noise_filters("default")


@contextlib.contextmanager
def _noise_policy(verbose: bool) -> Iterator[None]:
    """Hide the noise unless ``verbose``; every change is undone on exit (so in-process runs do not leak)."""
    with warnings.catch_warnings():
        if not verbose:
            _hide_noise()
        try:
            yield
        finally:
            _show_noise()


# ----------------------------------------------------------------------------------------------------------------------
# Config names
# ----------------------------------------------------------------------------------------------------------------------
def resolve_config(value: str, cwd: Path | None = None) -> str:
    """The file a ``--config`` value names: as given when it exists from ``cwd``, else looked up in ``configs/``.

    ``.yaml`` is appended when the name has no suffix. A value that is not a file name (an inline YAML/JSON string)
    is returned unchanged.

    Raises:
        ConfigError: a ``.yaml``/``.yml``/``.json`` name found in neither place (the message lists close names).
    """
    if not value or any(c in value for c in "\n{}[]") or ": " in value:
        return value  # inline configuration
    cwd = Path.cwd() if cwd is None else cwd
    given = Path(value).expanduser()
    if (cwd / given).exists():
        return value
    if given.is_absolute():
        candidates: list[Path] = []
    else:
        candidates = [CONFIG_DIR / given] + ([CONFIG_DIR / f"{value}.yaml"] if not given.suffix else [])
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    if given.suffix not in (".yaml", ".yml", ".json"):
        return value
    known = sorted(str(p.relative_to(CONFIG_DIR)) for p in CONFIG_DIR.rglob("*.yaml")) if CONFIG_DIR.is_dir() else []
    close = difflib.get_close_matches(value, known, n=4, cutoff=0.5)
    raise ConfigError(
        f"Config file '{value}' not found in the working directory ({cwd}) nor in {CONFIG_DIR}; "
        f"check the name{' (closest in configs/: ' + ', '.join(close) + ')' if close else ''}."
    )


def _resolve_config_args(args: list[str]) -> list[str]:
    """``args`` with every ``--config``/``-c`` value passed through :func:`resolve_config`."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg in ("--config", "-c") and i + 1 < len(out):
            out[i + 1] = resolve_config(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + resolve_config(arg.split("=", 1)[1])
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Layer listing
# ----------------------------------------------------------------------------------------------------------------------
def _input_size(model_args: Any, data_args: Any) -> int:
    for value in (getattr(model_args, "input_size", None), getattr(data_args, "image_size", None)):
        if isinstance(value, int) and value > 0:
            return value
    return 224


def print_layers(config: Any) -> str:
    """The probe-able layers of the model a parsed config names, as a table (see ``--print_layers``)."""
    from lit_explain.models.layer_listing import format_layers, list_layers
    from lit_explain.models.loading import load_model

    model_cfg = config.get("model")
    init = getattr(model_cfg, "init_args", None)
    spec = getattr(init, "model", None)
    if not isinstance(spec, str):
        owner = getattr(model_cfg, "class_path", "the configured method")
        raise ConfigError(f"--print_layers: {owner} has no 'model' argument naming a network (model.init_args.model); "
                          "it applies to the methods that explain a network's layers.")
    weights = getattr(init, "weights", "none") or "none"
    kwargs = dict(getattr(init, "model_kwargs", None) or {})
    data_init = getattr(config.get("data"), "init_args", None)
    size = _input_size(init, data_init)
    net = load_model(spec, weights=weights, **kwargs)
    rows, problem = list_layers(net, (3, size, size))
    title = (f"{len(rows)} probe-able layers of {spec} (weights: {weights}); output shapes for one {size}x{size} "
             "image (channels first: the first number of a 3-D shape is the number of units). "
             "Name one as the method's layer.")
    return format_layers(rows, title, problem)


# ----------------------------------------------------------------------------------------------------------------------
# The CLI
# ----------------------------------------------------------------------------------------------------------------------
def _raised_by_parser(err: BaseException) -> bool:
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and "jsonargparse" in Path(tb.tb_frame.f_code.co_filename).parts


def _unwrap(err: BaseException) -> BaseException:
    """The exception a class constructor raised, out of the argument parser's wrappers around it (if any)."""
    inner = err
    while _raised_by_parser(inner) and inner.__cause__ is not None:
        inner = inner.__cause__
    return inner


class ExplainCLI(LightningCLI):
    """LightningCLI with the project's defaults: saved configs may be overwritten, seeding is on, the project's log
    messages are shown at ``--log_level``, ``--print_layers`` lists the model's layers, and an exception raised by a
    constructor during instantiation reaches the caller as it was raised."""

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:  # noqa: D401 - LightningCLI hook
        parser = super().init_parser(**kwargs)
        for action in parser._actions:  # say where bare config names are looked up
            if "--config" in action.option_strings:
                action.help = _CONFIG_HELP
        return parser

    def add_arguments_to_parser(self, parser) -> None:  # noqa: D401 - LightningCLI hook
        parser.set_defaults({"trainer.logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                                                "init_args": {"save_dir": "outputs/tensorboard"}}})
        parser.add_argument("--log_level", type=str, default="INFO",
                            help="level of lit_explain's messages on stderr (search progress, caches, outputs)")
        parser.add_argument("--print_layers", action=ActionYesNo, default=False,
                            help="list the probe-able layers of the configured model (model.init_args.model) with "
                                 "their output shapes from one dummy forward pass, and exit without running")

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        # --verbose is added after the Trainer method's own arguments: validate and test already have one (print the
        # metrics, default True), which then also shows the hidden noise when given on the command line
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if not any("--verbose" in action.option_strings for action in parser._actions):
            parser.add_argument("--verbose", action=ActionYesNo, default=False, help=_VERBOSE_HELP)
            _OWN_VERBOSE.add(subcommand)
        return parser

    def instantiate_trainer(self, **kwargs: Any):  # noqa: D401 - LightningCLI hook
        """The trainer, with the method's default callbacks (its result writer, its metrics) unless configured:
        methods hand their result forward and never import the writers themselves."""
        from callbacks import default_callbacks

        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.extend(default_callbacks(self.model, trainer.callbacks))
        return trainer

    def before_instantiate_classes(self) -> None:  # noqa: D401 - LightningCLI hook
        config = self.config[self.subcommand] if self.subcommand else self.config
        configure_logging(config.get("log_level", "INFO"))
        if self.subcommand in _OWN_VERBOSE and config.get("verbose"):
            _show_noise(warnings_too=True)  # set in a config file (the command line flag was seen before parsing)
        if config.get("print_layers"):
            print(print_layers(config))
            raise SystemExit(0)

    def instantiate_classes(self) -> None:  # noqa: D401 - LightningCLI hook
        try:
            super().instantiate_classes()
        except Exception as err:
            inner = _unwrap(err)
            if inner is err:
                raise
            inner.__suppress_context__ = True  # the parser's report around it repeats the message with noise
            raise inner  # noqa: B904 - the cause chain of `inner` itself is kept


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


def _is_verbose(args: list[str]) -> bool:
    """Whether the command line asks for ``--verbose`` (``--verbose``, ``--verbose true``, ``--verbose=true``)."""
    verbose = False
    for i, arg in enumerate(args):
        if arg == "--verbose":
            following = args[i + 1].lower() if i + 1 < len(args) else ""
            verbose = following not in ("false", "no", "0")
        elif arg.startswith("--verbose="):
            verbose = arg.split("=", 1)[1].lower() in ("true", "yes", "1")
        elif arg == "--no_verbose":
            verbose = False
    return verbose


def _run(args: ArgsType) -> ExplainCLI | None:
    listed = isinstance(args, (list, tuple))
    argv = list(args) if listed else (sys.argv[1:] if args is None else [])
    if argv and argv[0] == "check":
        from lit_explain.datasets.broden_check import main as check_main

        code = check_main(argv[1:])
        if code:
            raise SystemExit(code)
        return None
    if listed:
        args = _resolve_config_args(argv)
    elif args is None:  # the resolved names also reach processes that re-run this command line (DDP)
        sys.argv[1:] = _resolve_config_args(argv)
    verbose = _is_verbose(argv)
    with _noise_policy(verbose):
        _import_plugins()
        return ExplainCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=True,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"description": _DESCRIPTION},
            args=args,
        )


def main(args: ArgsType = None, exit_on_error: bool | None = None) -> ExplainCLI | None:
    """Run the CLI; ``args`` (a list of strings) lets tests call it in-process.

    Args:
        args: the command line without the program name; None reads ``sys.argv``.
        exit_on_error: print a :class:`~lit_explain.errors.ConfigError` (a known bad input) or a
            ``FileNotFoundError`` (a file the input names is not there) as one line on stderr and exit with status 2,
            instead of raising it. Default: only when ``args`` is None (the console script
            and ``trainer_cli.py``); ``--verbose`` keeps the traceback.

    Returns:
        The CLI object of a Lightning subcommand (None for ``check``).
    """
    if exit_on_error is None:
        exit_on_error = args is None
    try:
        return _run(args)
    except (ConfigError, FileNotFoundError) as err:  # a known bad input, or a file the input names that is not there
        argv = sys.argv[1:] if args is None else list(args) if isinstance(args, (list, tuple)) else []
        if not exit_on_error or _is_verbose(argv):
            raise
        message = " ".join(str(err).split())
        print(f"error: {message} (--verbose shows the traceback)", file=sys.stderr)
        raise SystemExit(2) from None
