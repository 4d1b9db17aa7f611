"""`codesign validate` (under construction)."""

from __future__ import annotations

import argparse

from codesign.errors import CodesignError


def add_parser(sub) -> argparse.ArgumentParser:
    return sub.add_parser("validate", help="(under construction)")


def run(args: argparse.Namespace) -> int:
    raise CodesignError("'validate' is not available yet")
