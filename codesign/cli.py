"""The `codesign` command line. Each subcommand lives in `codesign/commands/<name>.py` and exposes
`add_parser(subparsers)` and `run(args) -> int`. User errors (`CodesignError`) print one line and
exit 2; nothing reaches the user as a traceback."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from codesign.errors import CodesignError

COMMANDS = ["simulate", "sweep", "trace", "run", "validate", "reproduce", "kernel", "report", "calibrate",
            "native-check"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="codesign",
        description="Hardware/model co-design for sparse MoE LLMs: trace real models, map them onto "
        "a hardware spec and simulate throughput, latency and memory.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"codesign.commands.{name.replace('-', '_')}")
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        # long commands (plan searches, reproduce, validate) show one progress bar on a terminal
        from codesign.commands.progress import progress_bar

        with progress_bar(f"codesign {args.command}"):
            return int(args._run(args) or 0)
    except CodesignError as e:
        print(f"codesign: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("codesign: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`codesign trace --json | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
