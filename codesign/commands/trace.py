"""`codesign trace` (under construction)."""

from __future__ import annotations

import argparse

from codesign.errors import CodesignError


def add_parser(sub) -> argparse.ArgumentParser:
    return sub.add_parser("trace", help="(under construction)")


def run(args: argparse.Namespace) -> int:
    raise CodesignError("'trace' is not available yet")
