"""Router models: counts sum to the routed slots, uniform matches its expectation, seeds are honoured."""

import numpy as np
import pytest

from codesign.errors import CodesignError
from codesign.graph.router import HistogramRouter, UniformRouter, ZipfRouter, expected_experts_touched, make_router


def test_uniform_counts_and_expected_experts_touched():
    r = UniformRouter(seed=0)
    touched = [int((r.tokens_per_expert(layer, 64, 512, 10) > 0).sum()) for layer in range(40)]
    for layer in range(3):
        c = r.tokens_per_expert(layer, 64, 512, 10)
        assert c.sum() == 640 and c.max() <= 64  # top-k experts are distinct per token
    # E * (1 - (1 - k/E)^B) = 367.1 for E=512, k=10, B=64
    assert abs(np.mean(touched) - expected_experts_touched(512, 10, 64)) < 3


def test_same_seed_same_counts_other_seed_other_counts():
    a = UniformRouter(seed=1).tokens_per_expert(5, 100, 128, 8)
    b = UniformRouter(seed=1).tokens_per_expert(5, 100, 128, 8)
    c = UniformRouter(seed=2).tokens_per_expert(5, 100, 128, 8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_exact_draw_where_k_over_e_is_large():
    # Mixtral-like 2 of 8: the exact draw never gives an expert more than one slot per token
    for layer in range(20):
        c = UniformRouter().tokens_per_expert(layer, 3, 8, 2)
        assert c.sum() == 6 and c.max() <= 3


def test_memoised_draws_equal_fresh_ones():
    from codesign.graph.router import routed_counts

    r = ZipfRouter(seed=3, alpha=1.1)
    fresh = tuple(r.tokens_per_expert(7, 96, 512, 10).tolist())
    assert routed_counts(r, 7, 96, 512, 10) == fresh == routed_counts(r, 7, 96, 512, 10)


def test_large_batches_use_the_multinomial_and_keep_the_total():
    c = UniformRouter().tokens_per_expert(0, 32768, 512, 10)
    assert c.sum() == 327680
    assert abs(c.mean() - 640) < 1e-9 and c.std() < 60  # ~ sqrt(640)


def test_zipf_skews_load():
    u = UniformRouter(seed=0).tokens_per_expert(0, 4096, 128, 8)
    z = ZipfRouter(seed=0, alpha=1.2).tokens_per_expert(0, 4096, 128, 8)
    assert z.sum() == u.sum()
    assert z.max() > 2 * u.max()


def test_histogram_rescales_exactly():
    h = HistogramRouter(counts=(3, 1, 0, 4))
    c = h.tokens_per_expert(0, 10, 4, 2)
    assert c.tolist() == [8, 2, 0, 10]  # 20 slots in proportion 3:1:0:4 (7.5, 2.5, 0, 10 -> largest remainder)
    with pytest.raises(ValueError, match="3 experts"):
        HistogramRouter(counts=(1, 2, 3)).tokens_per_expert(0, 10, 4, 2)


def test_make_router():
    assert isinstance(make_router(None), UniformRouter)
    assert make_router("zipf:1.5").alpha == 1.5
    with pytest.raises(CodesignError, match="router: expected uniform, zipf, zipf:ALPHA or a RouterModel, found 'hot'"):
        make_router("hot")
    with pytest.raises(CodesignError, match="ALPHA a number from 0 to 100, found 'zipf:nan'"):
        make_router("zipf:nan")


def test_uniform_small_draw_has_the_multinomial_distribution():
    """Decode-sized draws (at most 16 slots per expert) count independent uniform picks: each draw
    routes every slot, repeats bit for bit, and over many layers the per-expert counts have the
    multinomial's mean N/E and variance N (1/E) (1 - 1/E)."""
    import numpy as np

    from codesign.graph.router import UniformRouter

    r = UniformRouter(seed=3)
    E, tokens, k = 512, 100, 10
    draws = np.array([r.tokens_per_expert(layer, tokens, E, k) for layer in range(400)])
    assert (draws.sum(axis=1) == tokens * k).all()
    assert (draws[7] == r.tokens_per_expert(7, tokens, E, k)).all()
    n = tokens * k
    mean, var = n / E, n * (1 / E) * (1 - 1 / E)
    assert draws.mean() == pytest.approx(mean, rel=1e-12)  # every draw sums to n
    assert draws.var() == pytest.approx(var, rel=0.03)  # 204,800 counts: sampling error ~0.3%


def test_uniform_picks_are_the_generators_own_draws():
    """`uniform_picks` counts, from kept raw outputs, exactly the picks
    `default_rng([seed, layer]).integers(0, E, size=slots)` makes, for experts counts that are
    powers of two and that are not, and `routed_matrix` rows equal the per-layer draws."""
    from codesign.graph.router import routed_array, routed_matrix, uniform_picks

    for E in (1, 2, 60, 128, 160, 384, 512):  # powers of two take a shift (`lemire_picks`)
        for slots in (1, 7, 640, 16 * E):
            layers = [0, 5, 17, 10_061]
            got = uniform_picks(4, layers, slots, E)
            for row, layer in zip(got, layers):
                picks = np.random.default_rng([4, layer]).integers(0, E, size=slots)
                assert np.array_equal(row, np.bincount(picks, minlength=E))
    r = UniformRouter(seed=2)
    for n in (3, 100, 4096):  # 4096 x 10 slots over 512 experts: the multinomial, stacked
        m = routed_matrix(r, [1, 2, 3], n, 512, 10)
        assert all(np.array_equal(m[j], routed_array(r, layer, n, 512, 10)) for j, layer in enumerate([1, 2, 3]))
        assert m.sum() == 3 * n * 10


def test_lemire_rejections_are_flagged():
    """Where E does not divide 2^32 the bounded rule rejects some outputs (often for E near 2^31):
    rows without a rejection equal the generator's picks from the same outputs; others are flagged."""
    from codesign.graph.router import lemire_picks

    E = 2 ** 31 + 1
    flagged = 0
    for layer in range(40):
        bg = np.random.PCG64(np.random.SeedSequence([0, layer]))
        u32 = bg.random_raw(2).view(np.uint32)[None, :3]
        picks, rejected = lemire_picks(u32, E)
        flagged += int(rejected[0])
        if not rejected[0]:
            assert picks[0].tolist() == np.random.default_rng([0, layer]).integers(0, E, size=3).tolist()
    assert 0 < flagged < 40


def test_uniform_picks_near_the_last_draw_count_only_the_difference():
    """Over a power-of-two expert count, a draw of n slots after one of m slots of the same layers
    adds (or removes) the counts of picks m..n-1: every draw of a walk up and down in slot counts
    equals the generator's own picks, and the returned counts cannot be changed in place."""
    from codesign.graph import router as rt

    layers, E = [0, 3, 9, 10_064], 256
    rt._LAST.clear()
    for slots in (1000, 1010, 1003, 400, 2047, 1, 2, 2046, 5000):
        got = rt.uniform_picks(7, layers, slots, E)
        assert not got.flags.writeable
        for row, layer in zip(got, layers):
            picks = np.random.default_rng([7, layer]).integers(0, E, size=slots)
            assert np.array_equal(row, np.bincount(picks, minlength=E))
