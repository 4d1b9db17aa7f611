"""Step shapes: constructors, derived counts, canonical form, and bad input."""

from __future__ import annotations

import pytest

from codesign.errors import CodesignError
from codesign.graph.shape import Group, StepShape


def test_constructors_spell_the_engine_steps():
    d = StepShape.decode(64, kv_len=32_768)
    assert d.groups == (Group(64, 1, 32_767),) and d.groups[0].kv_len == 32_768 and d.groups[0].phase == "decode"
    p = StepShape.prefill(2, 8192, cached=16_384)
    assert p.tokens == 16_384 and p.groups[0].kv_len == 24_576 and p.groups[0].phase == "prefill"
    v = StepShape.verify(8, cached=100, draft=3)
    assert v.groups == (Group(8, 4, 100, logits=4),) and v.tokens == 32


def test_mixed_step_counts_and_canonical_form():
    s = StepShape((Group(3, 1, 10), Group(1, 512, 0), Group(2, 1, 10)))
    assert (s.seqs, s.tokens, s.is_mixed) == (6, 3 + 512 + 2, True)
    c = s.canonical()
    assert c.groups == (Group(5, 1, 10), Group(1, 512, 0))
    assert c == StepShape((Group(1, 512, 0), Group(5, 1, 10))).canonical() and hash(c) == hash(c.canonical())


@pytest.mark.parametrize("args", [(0, 1, 0), (1, 0, 0), (1, 1, -1), (1.5, 1, 0), (True, 1, 0)])
def test_bad_groups_are_one_line_errors(args):
    with pytest.raises(CodesignError, match="step shape"):
        Group(*args)


def test_empty_and_bad_decode_shapes():
    with pytest.raises(CodesignError, match="at least one group"):
        StepShape(())
    with pytest.raises(CodesignError, match="kv_len"):
        StepShape.decode(1, 0)
