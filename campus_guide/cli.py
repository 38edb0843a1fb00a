"""The one console script. Each area registers its own subcommands; heavy imports happen
inside the handlers, so `campus-guide kb ...` never loads a model and the device never imports
torch."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .config import ConfigError
from .errors import UserError

# Each module exposes register(subparsers); handlers are set with set_defaults(func=...).
AREAS = (
    "campus_guide.knowledge.cli",
    "device.cli",
    "device.appliance_cli",
    "training.cli",
    "export.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="campus-guide", description=__doc__)
    parser.add_argument("--config", help="YAML config (default: $CAMPUS_GUIDE_CONFIG or built-in)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging (llama.cpp's own messages included)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in AREAS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Commands a person reads (ask, demo) log warnings only; services and long jobs log progress.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else getattr(args, "log_level", logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except (UserError, ConfigError, FileNotFoundError) as e:
        print(f"campus-guide: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
