"""The `hf-sae` command line: thin subcommands that parse arguments and call the library."""

import argparse
import sys

from . import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hf-sae", description="Sparse autoencoders for Hugging Face models.")
    parser.add_argument("--version", action="version", version=f"hf-sae {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
