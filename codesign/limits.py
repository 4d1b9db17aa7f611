"""Bounds on sizes and counts that no input can mean, refused where the input is read.

Each bound is far beyond any built or announced system or published model, and small enough that
the tracer, the mapping and the simulator stay quick and finite under it (a topology graph with a
billion nodes, a layer list with a trillion entries or a divisor loop over a billion chips would
hang or exhaust memory). A value beyond its bound is a `CodesignError` naming the field, the bound
and the value found. Raise a bound here (and only here) when a real design needs more.
"""

from __future__ import annotations

# Deployment and topology sizes.
MAX_CHIPS = 1 << 20  # chips in one deployment (`--chips`, `system.chips`): 1,048,576
MAX_SCALE_UP = 1 << 16  # chips in one scale-up domain (TPU v5p pods: 8,960; NVL576 announced): 65,536
MAX_FULL_MESH = 1024  # chips of a `full_mesh` domain: its graph has n(n-1)/2 edges
MAX_LINKS = 1 << 12  # scale-up links per chip: 4,096
MAX_TILE = 1 << 12  # each dimension of the matrix unit's tile: 4,096

# Workload sizes.
MAX_TOKENS = 1 << 32  # a token count (context, prompt, output): 4,294,967,296
MAX_BATCH = 1 << 24  # sequences in one step or deployment: 16,777,216

# Model shapes.
MAX_LAYERS = 4096  # decoder layers (published models: at most ~130)
MAX_WIDTH = 1 << 20  # hidden, intermediate, head and latent sizes: 1,048,576
MAX_HEADS = 1 << 16  # attention / linear-attention heads: 65,536
MAX_VOCAB = 1 << 24  # vocabulary entries: 16,777,216
MAX_EXPERTS = 1 << 16  # routed experts (and groups, top-k): 65,536

# Input files: a spec, model config or scenario larger than this is not one.
MAX_FILE_BYTES = 16 << 20  # 16 MiB


def check_count(field: str, value: object, maximum: int, minimum: int = 1) -> int:
    """`value` as an int in [minimum, maximum], else a ValueError naming `field` (for callers
    outside pydantic: CLI flags and Python API arguments)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field}: expected an integer from {minimum:,} to {maximum:,}, found {show(value)}")
    if not minimum <= value <= maximum:
        raise ValueError(f"{field}: expected an integer from {minimum:,} to {maximum:,}, found {show(value)}")
    return value


def show(value: object, width: int = 60) -> str:
    """A short repr of a found value for an error line (huge integers and long inputs abbreviated)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        try:
            return f"an integer of {len(str(abs(value)))} digits"
        except ValueError:  # beyond Python's int-to-text limit
            return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxdict, r.maxtuple, r.maxset = 2, 4, 4, 4, 4
    r.maxstring = r.maxother = r.maxlong = width
    return r.repr(value)


__all__ = [name for name in dir() if name.startswith("MAX_")] + ["check_count", "show"]
