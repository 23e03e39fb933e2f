
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import sparse
from scipy.optimize import linprog

from sftscope import SftscopeError, and_or_interactions, mobius_transform, zeta_transform
from sftscope.decompose import complement, or_effects_from, reconstruct, reference_sgd_solve, superset_sum

from conftest import planted_game


def dense_mobius(values):
    size = len(values)
    out = np.zeros(size)
    for t in range(size):
        for sub in range(size):
            if sub & t == sub:
                out[t] += (-1) ** (bin(t).count("1") - bin(sub).count("1")) * values[sub]
    return out


@pytest.mark.parametrize("n", [1, 3, 6, 8])
def test_fast_transforms_equal_dense_definitions(n, rng):
    x = rng.standard_normal(1 << n)
    np.testing.assert_allclose(mobius_transform(x), dense_mobius(x), atol=1e-9)
    np.testing.assert_allclose(zeta_transform(mobius_transform(x)), x, atol=1e-9)
    size = 1 << n
    dense_sup = np.array([sum(x[s] for s in range(size) if s & t == t) for t in range(size)])
    np.testing.assert_allclose(superset_sum(x), dense_sup, atol=1e-9)
    # the OR definition, straight from METHOD.md
    v_or = rng.standard_normal(size)
    expected = np.array([
        -sum((-1) ** (bin(t).count("1") - bin(l).count("1")) * v_or[(size - 1) ^ l]
             for l in range(size) if l & t == l)
        for t in range(size)
    ])
    expected[0] = v_or[0]
    np.testing.assert_allclose(or_effects_from(v_or), expected, atol=1e-9)
    assert np.array_equal(complement(np.arange(size)), (size - 1) ^ np.arange(size))


def test_transforms_work_on_batches(rng):
    x = rng.standard_normal((5, 64))
    np.testing.assert_allclose(mobius_transform(x), np.stack([dense_mobius(r) for r in x]), atol=1e-9)


def lp_optimum(values, noise_bound):
    """The exact optimum from the paper's (p, q) form with dense matrices, via scipy HiGHS."""
    size = len(values)
    mob = np.array([[(-1) ** (bin(t).count("1") - bin(l).count("1")) if l & t == l else 0
                     for l in range(size)] for t in range(size)], dtype=float)
    mob_or = -mob[:, ::-1]
    eps = noise_bound * abs(values[-1] - values[0])
    # variables: p (free), q (box), a+ a- for AND rows != 0, o+ o- for OR rows != 0  -> equality rows
    k = size - 1
    nvar = 2 * size + 4 * k
    rows, rhs = [], []
    for t in range(1, size):
        # AND: mob[t] @ (0.5 v + 0.5 q + p) = a+ - a-
        row = np.zeros(nvar)
        row[:size] = mob[t]
        row[size:2 * size] = 0.5 * mob[t]
        row[2 * size + (t - 1)] = -1
        row[2 * size + k + (t - 1)] = 1
        rows.append(row)
        rhs.append(-0.5 * mob[t] @ values)
        row = np.zeros(nvar)
        row[:size] = -mob_or[t]
        row[size:2 * size] = 0.5 * mob_or[t]
        row[2 * size + 2 * k + (t - 1)] = -1
        row[2 * size + 3 * k + (t - 1)] = 1
        rows.append(row)
        rhs.append(-0.5 * mob_or[t] @ values)
    cost = np.concatenate([np.zeros(2 * size), np.ones(4 * k)])
    bounds = [(None, None)] * size + [(-eps, eps)] * size + [(0, None)] * (4 * k)
    res = linprog(cost, A_eq=sparse.csr_matrix(np.array(rows)), b_eq=np.array(rhs), bounds=bounds, method="highs")
    assert res.status == 0
    return res.fun


@pytest.mark.parametrize("n", [3, 5, 7, 8])
def test_solver_reaches_the_lp_optimum(n, rng):
    values = rng.standard_normal(1 << n) * 2
    result = and_or_interactions(values, noise_bound=0.02)
    optimum = lp_optimum(values, 0.02)
    assert result.objective <= optimum * 1.01 + 1e-9
    assert result.objective >= optimum * (1 - 1e-6) - 1e-9  # cannot beat the optimum of the same problem


@pytest.mark.parametrize("method", ["rowgen", "simplex", "ipm"])
@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_every_method_reaches_the_lp_optimum(method, kind, rng):
    # dense: white noise, every coefficient needed; sparse: few interactions + noise inside the bound
    n = 8
    size = 1 << n
    if kind == "dense":
        values = rng.standard_normal(size) * 2
    else:
        masks = np.arange(size)
        values = 3.0 * ((masks & 0b11) == 0b11) - 2.0 * ((masks & 0b10100) != 0) + 0.01 * rng.standard_normal(size)
    result = and_or_interactions(values, method=method)
    optimum = lp_optimum(values, 0.02)
    assert optimum * (1 - 1e-6) - 1e-9 <= result.objective <= optimum * 1.01 + 1e-9
    assert result.matching_error < 1e-9


def test_row_generation_hands_dense_games_to_the_interior_point_method(rng, monkeypatch):
    from sftscope import decompose, interior_point

    dense = rng.standard_normal(1 << 8) * 2  # white noise: row generation needs thousands of pivots
    masks = np.arange(1 << 8)
    sparse = 3.0 * ((masks & 0b11) == 0b11) - 2.0 * ((masks & 0b10100) != 0) + 0.01 * rng.standard_normal(1 << 8)
    assert decompose._solve_rowgen(dense, 0.05, iteration_budget=1 << 7) is None
    batches = []
    solve = interior_point.solve_dense_games
    monkeypatch.setattr(interior_point, "solve_dense_games", lambda v, *a, **k: batches.append(len(v)) or solve(v, *a, **k))
    results = and_or_interactions(np.stack([dense, sparse, dense[::-1]]), method="auto")
    assert batches == [2]  # both dense games, in one batch; the sparse one finished by row generation
    assert results[0].objective <= lp_optimum(dense, 0.02) * 1.01
    assert results[0].objective >= lp_optimum(dense, 0.02) * (1 - 1e-6)


def test_a_mixed_batch_gives_every_game_its_own_answer(rng):
    # a sparse game (row generation), a dense one (our interior point), a dense one with v(N) = v(0)
    # (zero noise bound: HiGHS's interior point); each must get the answer it gets alone
    n = 8
    masks = np.arange(1 << n)
    sparse = 3.0 * ((masks & 0b11) == 0b11) - 2.0 * ((masks & 0b10100) != 0) + 0.01 * rng.standard_normal(1 << n)
    dense = rng.standard_normal(1 << n) * 2
    flat_ends = rng.standard_normal(1 << n)
    flat_ends[-1] = flat_ends[0]
    games = np.stack([sparse, dense, flat_ends])
    together = and_or_interactions(games)
    for game, result in zip(games, together):
        alone = and_or_interactions(game, method="simplex")
        assert result.objective == pytest.approx(alone.objective, rel=1e-6)
        np.testing.assert_array_equal(result.values, game)


def test_interior_point_failure_falls_back_to_highs_with_a_warning(rng, monkeypatch, caplog):
    from sftscope import interior_point

    values = rng.standard_normal(1 << 7) * 2
    solve = interior_point.solve_dense_games
    monkeypatch.setattr(interior_point, "solve_dense_games", lambda *a, **k: solve(*a, **{**k, "max_iter": 3}))
    with caplog.at_level("WARNING", logger="sftscope.decompose"):
        result = and_or_interactions(values, method="ipm")
    assert "did not converge on game 0" in caplog.text
    assert result.objective == pytest.approx(lp_optimum(values, 0.02), rel=1e-4)


def test_interior_point_games_do_not_interact(rng):
    from sftscope.decompose import _column_costs
    from sftscope.interior_point import solve_dense_games

    games = rng.standard_normal((3, 1 << 7))
    games /= np.abs(games).max(axis=1, keepdims=True)
    eps = np.array([0.01, 0.02, 0.005])
    costs = _column_costs(2 * (1 << 7) - 1)
    together = solve_dense_games(games, eps, costs)
    assert together[3].all()
    for i in range(3):
        alone = solve_dense_games(games[i : i + 1], eps[i : i + 1], costs)
        np.testing.assert_allclose(alone[0][0], together[0][i], atol=1e-12)
        np.testing.assert_allclose(alone[1][0], together[1][i], atol=1e-12)
        assert alone[2][0] == together[2][i]


def test_interior_point_rejects_a_zero_noise_bound(rng):
    from sftscope.decompose import _column_costs
    from sftscope.interior_point import solve_dense_games

    with pytest.raises(SftscopeError, match="positive noise bound"):
        solve_dense_games(rng.standard_normal((1, 16)), np.zeros(1), _column_costs(31))


def test_zero_noise_bound_is_solved_exactly(rng):
    values = rng.standard_normal(1 << 7)
    for method in ("auto", "ipm"):
        result = and_or_interactions(values, noise_bound=0.0, method=method)
        assert np.all(result.q == 0)
        assert result.objective == pytest.approx(lp_optimum(values, 0.0), rel=1e-6)


def test_row_generation_needs_few_masks_on_a_sparse_game(rng, monkeypatch):
    from sftscope import decompose

    n = 9
    masks = np.arange(1 << n)
    values = 2.0 * ((masks & 0b11) == 0b11) + 1.5 * ((masks & 0b1100000) != 0) + 0.01 * rng.standard_normal(1 << n)
    added = []
    add_rows = decompose._add_rows
    monkeypatch.setattr(decompose, "_add_rows", lambda h, m, rows, v, e: added.append(len(rows)) or add_rows(h, m, rows, v, e))
    sparse_result = and_or_interactions(values, method="rowgen")
    assert sum(added) < (1 << n) // 2
    ipm_result = and_or_interactions(values, method="ipm")
    assert sparse_result.objective == pytest.approx(ipm_result.objective, rel=1e-6)
    assert {(i.kind, i.mask) for i in sparse_result.salient()} == {(i.kind, i.mask) for i in ipm_result.salient()}


def test_unknown_method_is_rejected():
    with pytest.raises(SftscopeError, match="unknown AND-OR solver method 'newton'"):
        and_or_interactions(np.zeros(4), method="newton")


@pytest.mark.parametrize("seed", range(4))
def test_universal_matching_on_random_games(seed):
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(1 << 7) * 5
    result = and_or_interactions(values)
    fitted = reconstruct(result.and_effects, result.or_effects)
    assert np.max(np.abs(values + result.q - fitted)) < 1e-9
    assert result.matching_error < 1e-9
    eps = 0.02 * abs(values[-1] - values[0])
    assert np.all(np.abs(result.q) <= eps + 1e-12)
    # p splits v + q into the AND and OR parts of METHOD.md
    v_and = 0.5 * (values + result.q) + result.p
    np.testing.assert_allclose(mobius_transform(v_and), result.and_effects, atol=1e-9)


def test_planted_interactions_are_recovered(rng):
    planted = {("AND", 0b1): 2.0, ("AND", 0b110): -1.5, ("AND", 0b101000): 1.2,
               ("OR", 0b10010): 1.8, ("OR", 0b11000000): -1.0, ("AND", 0b1110000): 0.9}
    values = planted_game(8, planted, rng, noise=0.005)
    result = and_or_interactions(values)

    def key(kind, mask):  # a single-player AND and OR are the same function
        return ("ANY", mask) if bin(mask).count("1") == 1 else (kind, mask)

    expected = {key(*k): v for k, v in planted.items()}
    found = {key(i.kind, i.mask): i.effect for i in result.salient(0.1)}
    assert set(found) == set(expected)
    # q may absorb up to 2 * eps of an effect: that is what the noise bound is for
    slack = 2 * 0.02 * abs(values[-1] - values[0]) + 0.03
    for k, effect in found.items():
        assert effect == pytest.approx(expected[k], abs=slack)


def test_batch_equals_one_by_one(rng):
    games = rng.standard_normal((3, 64))
    batch = and_or_interactions(games, workers=2)
    for game, res in zip(games, batch):
        single = and_or_interactions(game)
        assert res.objective == pytest.approx(single.objective, rel=1e-9, abs=1e-9)
        np.testing.assert_allclose(res.and_effects + 0, single.and_effects, atol=1e-7)


def test_same_input_same_result(rng):
    values = rng.standard_normal(256)
    a, b = and_or_interactions(values), and_or_interactions(values)
    assert np.array_equal(a.and_effects, b.and_effects) and np.array_equal(a.or_effects, b.or_effects)


def test_reference_sgd_is_feasible_and_not_better_than_lp(rng):
    values = rng.standard_normal(16)
    ref = reference_sgd_solve(values, iterations=2000, lr=1e-2)
    ours = and_or_interactions(values)
    assert ref.matching_error < 1e-9
    assert ours.objective <= ref.objective + 1e-9


@pytest.mark.parametrize("bad", [np.array([1.0, np.nan, 2.0, 3.0]), np.array([1.0, 2.0, np.inf, 0.0])])
def test_nan_values_are_rejected(bad):
    with pytest.raises(SftscopeError, match="NaN/inf"):
        and_or_interactions(bad)


def test_wrong_length_is_rejected():
    with pytest.raises(SftscopeError, match="2\\*\\*n"):
        and_or_interactions(np.ones(6))


def test_constant_game_has_no_interactions():
    result = and_or_interactions(np.full(32, 3.0))
    assert result.salient() == []
    assert result.bias == pytest.approx(3.0)


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=1, max_value=6).flatmap(
    lambda n: st.lists(st.floats(-10, 10), min_size=1 << n, max_size=1 << n)))
def test_property_matching_bound_and_objective(values):
    values = np.array(values)
    result = and_or_interactions(values)
    assert result.matching_error <= 1e-9 * max(1.0, np.abs(values).max())
    eps = 0.02 * abs(values[-1] - values[0])
    assert np.all(np.abs(result.q) <= eps + 1e-12)
    plain_and = np.abs(mobius_transform(values)[1:]).sum()  # the all-AND split with q = 0 is feasible
    assert result.objective <= plain_and + 1e-7 * max(1.0, plain_and)


@pytest.mark.parametrize("method", ["rowgen", "simplex", "ipm"])
def test_one_player_effects_are_reported_as_and(method, rng):
    # v = 2 [0 in S] + 1.5 [1 in S] - OR{2,3} ... : the singletons could be AND or OR at equal cost
    n = 6
    masks = np.arange(1 << n)
    values = 2.0 * ((masks & 1) != 0) + 1.5 * ((masks & 2) != 0) - 1.2 * ((masks & 0b1100) != 0)
    values = values + 0.3 * ((masks & 0b110000) == 0b110000) + 0.002 * rng.standard_normal(1 << n)
    result = and_or_interactions(values, method=method)
    singles = [1 << i for i in range(n)]
    assert np.all(np.abs(result.or_effects[singles]) < 1e-12)
    assert np.abs(result.and_effects[singles]).max() > 0.1  # the one-player effects are there, as AND
    assert result.objective <= lp_optimum(values, 0.02) * 1.01
    assert result.matching_error < 1e-9


def test_every_method_picks_the_same_split_of_a_degenerate_game(rng):
    # 2 [0] + 1.5 [1] has several sparsest splits of equal L1 (e.g. through OR{0,1}); the nudged costs pick one
    n = 7
    masks = np.arange(1 << n)
    values = 2.0 * ((masks & 1) != 0) + 1.5 * ((masks & 2) != 0) - 1.2 * ((masks & 0b1100) != 0)
    values = values + 0.8 * ((masks & 0b110000) == 0b110000) + 0.001 * rng.standard_normal(1 << n)
    results = [and_or_interactions(values, method=m) for m in ("rowgen", "simplex", "ipm")]
    found = [{(i.kind, i.mask) for i in r.salient()} for r in results]
    assert found[0] == found[1] == found[2]
    # simplex methods return the same vertex; interior point stops within a 1e-8 gap of it
    np.testing.assert_allclose(results[0].and_effects, results[1].and_effects, atol=1e-6)
    np.testing.assert_allclose(results[0].or_effects, results[2].or_effects, atol=1e-3)
    np.testing.assert_allclose(results[0].and_effects, results[2].and_effects, atol=1e-3)


def test_interior_point_normal_matrix_has_the_lattice_closed_form(rng):
    from sftscope.interior_point import _lattice_indices

    n = 5
    size = 1 << n
    masks = np.arange(size)
    on_and = ((masks[:, None] & masks[None, :]) == masks[None, :]).astype(float)  # [S, T]: T inside S
    on_or = ((masks[:, None] & masks[None, :]) == 0).astype(float)  # [S, T]: T inside N \ S
    d_and, d_or = rng.random(size), rng.random(size)
    dense = on_and @ np.diag(d_and) @ on_and.T + on_or @ np.diag(d_or) @ on_or.T
    pairs, meet, outside_join = (t.numpy() for t in _lattice_indices(n))
    table = zeta_transform(d_and)[meet] + zeta_transform(d_or)[outside_join]
    np.testing.assert_allclose(table[pairs].reshape(size, size), dense, atol=1e-12)


def test_an_indefinite_normal_matrix_sends_the_game_to_highs(rng, monkeypatch, caplog):
    from scipy.linalg import lapack

    values = rng.standard_normal(1 << 6) * 2
    monkeypatch.setattr(lapack, "dpotrf", lambda a, **k: (a, 1))  # every factorisation fails
    with caplog.at_level("WARNING", logger="sftscope.decompose"):
        result = and_or_interactions(values, method="ipm")
    assert "did not converge on game 0" in caplog.text
    assert result.objective == pytest.approx(lp_optimum(values, 0.02), rel=1e-4)
