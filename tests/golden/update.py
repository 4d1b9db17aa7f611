"""Regenerate tests/golden/results.json: `python -m tests.golden.update`. Commit the diff it shows."""

from __future__ import annotations

import json
from pathlib import Path

from tests.golden.cases import CASES, run_case

PATH = Path(__file__).with_name("results.json")


def main() -> None:
    data = {name: run_case(name) for name in CASES}
    PATH.write_text(json.dumps(data, indent=1, sort_keys=False, allow_nan=False) + "\n")
    print(f"wrote {len(data)} golden results to {PATH}")


if __name__ == "__main__":
    main()
