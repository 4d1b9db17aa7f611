"""The terminal table of `codesign simulate` result rows: a default that fits 100 columns (plain
text), and a `--wide` one with every column. Every field of a row is in `--json`.

Columns (also in README and docs/simulator.md):

* ``context`` -- the KV length a request is simulated at (decode: tokens already cached).
* ``plan`` -- the parallel plan, e.g. ``ep8 adp8`` = expert-parallel 8 with attention data-parallel
  8 (``tp``/``ep``/``pp``/``dp``/``adp`` = tensor/expert/pipeline/data/attention-data parallel
  widths; ``1`` = one chip, nothing split).
* ``batch`` -- sequences in flight across the whole deployment (the result's ``concurrency``).
* ``out tok/s`` -- output tokens per second of the whole deployment; in prefill mode the column is
  ``in tok/s``, prompt tokens per second (both ``--json`` keys are always there).
* ``TTFT s`` -- time to first token, seconds; ``TPOT ms`` -- time per output token, milliseconds.
* ``GiB used/cap`` -- memory per chip of the most loaded chip, used of capacity (GiB, 2^30 bytes;
  capacity as the runtime reports it, docs/hardware.md). ``--wide`` splits the used part.
* ``bound`` -- the resource carrying most of the step's time: ``hbm`` (device memory bandwidth),
  ``compute`` (matrix or vector units), ``link`` (interconnect), ``sram`` (on-chip memory),
  ``overhead`` (kernel launches); ``capacity`` or ``-`` on a row that does not run, whose reason is
  printed under the table.
"""

from __future__ import annotations

import sys
import textwrap

from codesign.results import Result

DEFAULT_WIDTH = 100  # the default table must fit a 100-column terminal

LEGEND = (
    "batch: sequences in flight. out/in tok/s: output/prompt (prefill mode) tokens per second; batch "
    "and tok/s are for the whole deployment. TTFT: time to first token. TPOT: time per output token. "
    "GiB used/cap: memory per chip, most loaded chip. bound: resource carrying most step time (hbm, "
    "compute, link, sram, overhead). More columns: --wide; every field: --json."
)

_SHORT = {"tp": "tp", "ep": "ep", "pp": "pp", "dp": "dp", "attention_dp": "adp"}


def console(width: int | None = None):
    """A rich console. Off a terminal (pipes, CI logs) it is `width` wide (default 200), so that
    tables do not fold."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=width or 200)


def _fmt(x: float | None, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def plan_label(plan: dict[str, int], short: bool = True) -> str:
    """'ep8 adp8' (short) or 'ep8,attention_dp8'; '1' for one chip with nothing split."""
    if short:
        return " ".join(f"{_SHORT.get(k, k)}{v}" for k, v in plan.items() if v != 1) or "1"
    return ",".join(f"{k}{v}" for k, v in plan.items() if v != 1) or "1"


def _ctx_label(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n // 1024}k" if n and n % 1024 == 0 else str(n)


def _rate(r: Result) -> float | None:
    return r.input_tokens_per_s if r.mode == "prefill" else r.output_tokens_per_s


def _rate_header(results: list[Result]) -> tuple[str, bool]:
    """(the tok/s column header, whether each cell must say in/out because modes are mixed)."""
    prefill = {r.mode == "prefill" for r in results if r.feasible or r.output_tokens_per_s is not None}
    if prefill == {True}:
        return "in tok/s", False
    if True in prefill:
        return "tok/s", True
    return "out tok/s", False


def _common_prefix(results: list[Result]) -> str | None:
    """'h200 qwen3.5-397b-a17b 8 chips' when every row is the derived name of one deployment (the
    scenario column is then redundant), else None."""
    keys = {(r.hardware, r.model, r.chips) for r in results}
    if len(keys) != 1:
        return None
    hw, model, chips = keys.pop()
    base = f"{hw}-{model}-{chips}x"
    if all(r.name == base or r.name.startswith(base + "-") for r in results):
        return f"{hw}, {model}, {chips} chip{'s' if chips != 1 else ''}"
    return None


def _bound(r: Result) -> str:
    if not r.feasible:
        return "capacity" if r.bottleneck == "capacity" else (r.bottleneck or "-")
    return r.bottleneck or "-"


def _compact_rows(results: list[Result], mixed: bool) -> list[list[str]]:
    rows = []
    for r in results:
        m = r.memory_per_chip_gib
        rate, tpot = _rate(r), r.tpot_s["mean"]
        rate_s = _fmt(rate, ",.0f")
        if mixed and rate is not None:
            rate_s += " in" if r.mode == "prefill" else " out"
        mem = "-" if m.get("total") is None else f"{_fmt(m['total'], '.1f')}/{_fmt(m['capacity'], '.1f')}"
        rows.append([_ctx_label(r.context), plan_label(r.plan), _fmt(r.concurrency, "d"), rate_s,
                     _fmt(rate / r.chips if rate is not None else None, ",.1f"), _fmt(r.ttft_s["mean"], ".3g"),
                     _fmt(tpot * 1e3 if tpot is not None else None, ".3g"), mem, _bound(r)])
    return rows


def _reasons(results: list[Result]) -> list[str]:
    return [f"{r.name}: {r.reason}" for r in results if not r.feasible and r.reason]


def print_table(results: list[Result], title: str = "codesign simulate", wide: bool = False) -> None:
    """The result table: compact (fits `DEFAULT_WIDTH` columns; plain text) or `wide` (every column)."""
    if wide:
        return _print_wide(results, title)
    for line in compact_lines(results, title):
        print(line)


def compact_lines(results: list[Result], title: str = "codesign simulate") -> list[str]:
    """The lines of the compact table. Rows of one deployment under derived names share a title;
    otherwise each row's scenario name is printed on its own line above its figures, so that
    names never squeeze the numbers."""
    prefix = _common_prefix(results)
    header, mixed = _rate_header(results)
    cols = ["context", "plan", "batch", header, "tok/s/chip", "TTFT s", "TPOT ms", "GiB used/cap", "bound"]
    left = {"context", "plan", "bound"}
    rows = _compact_rows(results, mixed)
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
    indent = "" if prefix else "  "

    def line(cells: list[str]) -> str:
        return indent + "  ".join(c.ljust(w) if h in left else c.rjust(w)
                                  for c, w, h in zip(cells, widths, cols)).rstrip()

    out = [f"{title}: {prefix}" if prefix else title, line(cols), indent + "-" * (sum(widths) + 2 * (len(cols) - 1))]
    for r, row in zip(results, rows):
        if not prefix:
            out.append(f"{r.name} ({r.mode or '-'})" if r.mode else r.name)
        out.append(line(row))
    out += [f"not run: {x}" for x in _reasons(results)]
    out += textwrap.wrap(LEGEND, DEFAULT_WIDTH)
    return out


def _print_wide(results: list[Result], title: str) -> None:
    from rich.table import Table

    header, mixed = _rate_header(results)
    t = Table(title=title)
    for col in ("scenario", "mode", "context", "plan", "batch", header, "tok/s/chip", "TTFT s", "TPOT ms",
                "weights GiB", "KV GiB", "state GiB", "act GiB", "GiB used/cap", "bound", "reason"):
        t.add_column(col, overflow="fold")
    for r in results:
        m = r.memory_per_chip_gib
        row = _compact_rows([r], mixed)[0]
        t.add_row(r.name, r.mode or "-", str(r.context or "-"), plan_label(r.plan, short=False), *row[2:7],
                  _fmt(m["weights"], ".1f"), _fmt(m["kv_cache"], ".1f"), _fmt(m["state"], ".2f"),
                  _fmt(m["activations"], ".2f"), row[7], row[8], r.reason or "")
    console(width=260).print(t)
