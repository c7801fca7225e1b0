"""``csl-ros``: the one command-line entry point.

Each subcommand lives in its own module exposing ``register(subparsers)``; that function adds the
subparser and sets ``func`` (called with the parsed args, returns an exit code). Command modules keep heavy
imports (torch, rclpy) inside their run functions, so ``csl-ros synth`` never pays for them.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from csl_ros import __version__

# Subcommand modules; each registers its own parser.
COMMAND_MODULES = [
    "csl_ros.data.synth_cli",
    "csl_ros.demo",
    "csl_ros.detect_cli",
    "csl_ros.eval.metrics_cli",
    "csl_ros.eval.bag_cli",
    "csl_ros.evaluate_cli",
    "csl_ros.teachers.cli",
    "csl_ros.teachers.models_cli",
    "csl_ros.training.cli",
]


def image_size_arg(text: str) -> tuple[int, int]:
    """argparse type for ``--size HxW`` (at least 16x16), shared by the subcommands."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 512x1024, got {text!r}") from None
    if h < 16 or w < 16:
        raise argparse.ArgumentTypeError(f"size {text} is too small (at least 16x16)")
    return h, w


def doc_description(doc: str | None) -> str:
    """A command module's docstring as its ``--help`` description: the text a user reads, without the
    reStructuredText literal markup (````x````) the docstring uses for the API docs."""
    return (doc or "").replace("``", "").strip() + "\n"


def add_command(subparsers, name: str, help: str, doc: str | None) -> argparse.ArgumentParser:
    """A subcommand: ``help`` is its line in the parent's command list, ``doc`` (a docstring whose first
    line is the subcommand's own one-line description) its ``--help`` text, paragraphs and examples kept
    as written."""
    return subparsers.add_parser(name, help=help, description=doc_description(doc),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (``prog: error: ...``), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def user_error_message(exc: BaseException) -> str | None:
    """The one-line message for an exception that is the user's to fix (bad value, missing or
    unwritable file, broken YAML), or None for a bug (which keeps its traceback)."""
    if isinstance(exc, FileExistsError):
        return f"{exc.filename}: exists and is not a directory"
    if isinstance(exc, NotADirectoryError):
        return f"{exc.filename}: a component of this path is a file, not a directory"
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    if isinstance(exc, (ValueError, OSError)):
        return " ".join(str(exc).split())  # one line, however the message was wrapped
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="csl-ros",
        description="CSL road-obstacle / OOD segmentation: synthetic data, training, detection, "
                    "ROS 2 bag conversion and SMIYC evaluation.")
    parser.add_argument("--version", action="version", version=f"csl-ros {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineErrorParser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as exc:
        # Bad input is the user's to fix: one clear line, no traceback.
        print(f"csl-ros {args.command}: error: {user_error_message(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
