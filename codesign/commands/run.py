"""`codesign run` (under construction)."""

from __future__ import annotations

import argparse

from codesign.errors import CodesignError


def add_parser(sub) -> argparse.ArgumentParser:
    return sub.add_parser("run", help="(under construction)")


def run(args: argparse.Namespace) -> int:
    raise CodesignError("'run' is not available yet")
