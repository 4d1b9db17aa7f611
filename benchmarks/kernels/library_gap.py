"""One kernel library's dense GEMM rows against the Hopper GEMM curve (kernel rows only; a report,
nothing is written to a spec): each row's error in time at the spec's constants, then the large-GEMM
fraction `gemm` refitted on that library's rows alone (every other constant held), beside the
family's value. A library curve enters the model only where such rows support it
(docs/cost-model.md "Dense GEMM kernel library").

    python benchmarks/kernels/library_gap.py cublaslt    # per-tensor FP8 torch._scaled_mm rows
    python benchmarks/kernels/library_gap.py cublas      # BF16 torch.mm / F.linear rows
    python benchmarks/kernels/library_gap.py cutlass

Rows at a stated power limit below the chip's TDP are left out (`fit.at_tdp`), as in every fit.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from codesign.hw import load_hw  # noqa: E402
from codesign.sim.kernel import predict  # noqa: E402
from codesign.sim.kernel_table import LIBRARIES, load_table, table_files  # noqa: E402

_spec = importlib.util.spec_from_file_location("kernel_fit", Path(__file__).with_name("fit.py"))
fit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fit)


def library_rows(library: str) -> list:
    """The library's dense GEMM rows on the full-rate Hopper parts, at TDP."""
    return [r for f in table_files() for r in load_table(f).rows
            if r.op == "gemm" and r.library == library and r.gemm_kernel is None
            and r.hw in fit.FULL_HOPPER and fit.at_tdp(r)]


def time_error(r) -> float:
    """Predicted / measured seconds - 1 at the spec's constants (+: the model is slower than the kernel)."""
    p = predict(r, load_hw(r.hw))
    return (p.seconds / r.seconds if r.metric == "seconds" else r.measured / getattr(p, r.metric)) - 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("library", choices=LIBRARIES)
    args = ap.parse_args(argv)
    rows = library_rows(args.library)
    if not rows:
        print(f"{args.library}: no dense Hopper GEMM rows at TDP")
        return 1
    for r in rows:
        print(f"  {r.hw} {r.dtype} {r.m}x{r.n}x{r.k} ({r.source}): predicted time {time_error(r):+.1%} vs measured")
    res = fit.fit(args.library, lambda r: r.op == "gemm" and r.library == args.library and r.gemm_kernel is None
                  and r.hw in fit.FULL_HOPPER,
                  {"gemm": (0.3, 1.0)}, set())  # the same rows: fit applies at_tdp itself
    family = load_hw(rows[0].hw).efficiency.gemm
    print(f"{args.library}: {res['rows']} rows; gemm refitted on them alone {res['params']['gemm']:.3f} "
          f"(family {family:.3f}); MAPE at the refit {res['mape']:.1%}, worst {res['worst']:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
