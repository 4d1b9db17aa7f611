"""The `codesign` command line. Each subcommand lives in `codesign/commands/<name>.py` and exposes
`add_parser(subparsers)` and `run(args) -> int`. User errors (`CodesignError`) print one line and
exit 2; nothing reaches the user as a traceback."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from codesign import __version__
from codesign.errors import CodesignError

COMMANDS = ["simulate", "sweep", "trace", "run", "validate", "reproduce", "kernel", "report", "calibrate",
            "native-check"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="codesign",
        description="Hardware/model co-design for sparse MoE LLMs: trace real models, map them onto "
        "a hardware spec and simulate throughput, latency and memory.",
    )
    parser.add_argument("--version", action="version", version=f"codesign {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"codesign.commands.{name.replace('-', '_')}")
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if sys.stdout is None or sys.stdout.closed:  # started with stdout closed (`codesign ... >&-`)
        _error("cannot write results: standard output is closed")
        return 1
    try:
        # long commands (plan searches, reproduce, validate) show one progress bar on a terminal
        from codesign.commands.progress import progress_bar

        with progress_bar(f"codesign {args.command}"):
            status = int(args._run(args) or 0)
        sys.stdout.flush()  # a full disk or a closed descriptor shows here, not at exit
        return status
    except CodesignError as e:
        _error(str(e))
        return 2
    except KeyboardInterrupt:
        _error_line("codesign: interrupted")
        return 130
    except BrokenPipeError:
        # the reader went away (`codesign trace --json | head`): stop quietly, as Unix tools do
        _silence_stdout()
        return 141
    except OSError as e:
        if not _is_stdout_error(e):
            raise
        # stdout is a full disk (`> /dev/full`) or a closed descriptor: say so once, lose nothing else
        _silence_stdout()
        _error(f"cannot write results to standard output ({e.strerror or e})")
        return 1


def _error(message: str) -> None:
    _error_line(f"codesign: error: {' '.join(message.split())}")  # always one line


def _error_line(line: str) -> None:
    if sys.stderr is not None:
        try:
            print(line, file=sys.stderr)
        except OSError:
            pass


def _is_stdout_error(e: OSError) -> bool:
    """An error writing standard output (ENOSPC, EBADF, EIO on the stdout descriptor)."""
    import errno

    # writes to a stream carry no file name; a failing open() or write_text() of a named file does
    return e.filename is None and e.errno in (errno.ENOSPC, errno.EBADF, errno.EIO, errno.EPIPE, errno.EDQUOT,
                                              errno.EFBIG)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush cannot fail again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())
