"""The ``lwc`` command line. Each module in this package adds one or more subcommands.

A subcommand module defines ``register(subparsers)``, which adds its parser and sets ``func`` (a callable taking
the parsed arguments and returning an exit code). Heavy imports belong inside ``func`` so that ``lwc --help``
stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

from ls_backend import __version__


class CLIError(Exception):
    """An error the user can fix; printed without a traceback."""


# what a command may raise for bad input: reported in one line (error_line), exit status 2
USER_ERRORS = (CLIError, FileNotFoundError, ValueError, KeyError)


def error_line(command: str, error: BaseException) -> str:
    """How ``lwc`` reports one of :data:`USER_ERRORS`."""
    message = error.args[0] if isinstance(error, KeyError) and error.args else error
    return f"lwc {command}: error: {message}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lwc", description="label-with-confidence: calibrated LLM cascades for Label Studio"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return parser


def configure_logging(verbose: bool = False) -> None:
    """The logging of every ``lwc`` command: INFO (DEBUG with ``-v``) to stderr, Optuna's warnings only."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from ls_backend.loop.tuning import quiet_optuna

    quiet_optuna()  # the commands that tune (serve's retrains, reports) log Optuna's warnings, not each trial


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as e:
        print(error_line(args.command, e), file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
