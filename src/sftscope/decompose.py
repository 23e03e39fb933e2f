"""Sparse AND-OR decomposition of a set function (METHOD.md section 3).

Pure array code: no models. A game is a vector ``values`` of length ``2**n``
with ``values[S] = v(S)`` for the bitmask ``S`` (bit ``i`` set = player ``i``
present).

The sparsest split is a linear programme. We solve it in the coefficient
space, where it is small and sparse: with ``A`` the AND coefficients and ``B``
the (negated) OR coefficients,

    minimise   sum_{T != 0} |A(T)| + |B(T)|
    subject to |zeta(A)(S) + zeta(B)(N \\ S) - v(S)| <= eps      for every S,

``zeta`` being the subset-sum transform. This is the paper's problem with
``p`` eliminated (any split of ``v + q`` is reachable by some ``p``); the
constraint matrix has ``2 * 3**n`` non-zeros. Sparse optima are pinned down
by few masks: HiGHS's dual simplex runs on a growing subset of the masks (row
generation), every mask being checked with one fast transform per round.
Games whose optimum turns out dense go, all together, to a batched
interior-point method whose normal equations have a closed form on the subset
lattice (``interior_point``). The optimum is then mapped back to ``p``, ``q`` and both effect vectors through
the fast transforms, and universal matching is checked on the result.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import numpy as np

from . import interior_point
from .errors import SftscopeError

logger = logging.getLogger(__name__)

Kind = Literal["AND", "OR"]

# --------------------------------------------------------------------------- transforms


def _num_players(size: int) -> int:
    n = size.bit_length() - 1
    if size < 1 or (1 << n) != size:
        raise SftscopeError(f"a game has 2**n values; got {size}")
    return n


def _butterfly(x: np.ndarray, op: str) -> np.ndarray:
    """In-place O(n 2^n) pass over the last axis, one player at a time."""
    size = x.shape[-1]
    n = _num_players(size)
    lead = x.shape[:-1]
    for i in range(n):
        view = x.reshape(lead + (size >> (i + 1), 2, 1 << i))
        if op == "zeta":  # f(S) += f(S without i)
            view[..., 1, :] += view[..., 0, :]
        elif op == "mobius":
            view[..., 1, :] -= view[..., 0, :]
        else:  # superset sum: f(S) += f(S with i)
            view[..., 0, :] += view[..., 1, :]
    return x


def zeta_transform(coefficients: np.ndarray) -> np.ndarray:
    """``out[S] = sum_{T subset of S} coefficients[T]`` (inverse of Möbius)."""
    return _butterfly(np.array(coefficients, dtype=np.float64), "zeta")


def mobius_transform(values: np.ndarray) -> np.ndarray:
    """Harsanyi dividends: ``out[T] = sum_{L subset of T} (-1)^{|T|-|L|} values[L]``."""
    return _butterfly(np.array(values, dtype=np.float64), "mobius")


def superset_sum(x: np.ndarray) -> np.ndarray:
    """``out[T] = sum_{S superset of T} x[S]``: the transpose of the zeta transform."""
    return _butterfly(np.array(x, dtype=np.float64), "superset")


def complement(x: np.ndarray) -> np.ndarray:
    """Re-index by the complement: ``out[S] = x[N \\ S]`` (bitmask ``full ^ S``)."""
    return np.ascontiguousarray(np.asarray(x)[..., ::-1])


def or_effects_from(v_or: np.ndarray) -> np.ndarray:
    """OR interactions of an output: ``I(T) = -Möbius(v_or(N \\ .))(T)``, ``I(0) = v_or(0)``."""
    effects = -mobius_transform(complement(v_or))
    effects[..., 0] = np.asarray(v_or)[..., 0]
    return effects


def reconstruct(and_effects: np.ndarray, or_effects: np.ndarray) -> np.ndarray:
    """The AND-OR logical model on every mask (universal matching, right-hand side)."""
    or_nonempty = np.array(or_effects, dtype=np.float64)
    or_bias = or_nonempty[..., :1].copy()
    or_nonempty[..., 0] = 0.0
    total = or_nonempty.sum(axis=-1, keepdims=True)
    # sum over T touching S = all - those inside the complement of S
    touching = total - complement(zeta_transform(or_nonempty))
    return zeta_transform(and_effects) + or_bias + touching


def popcount(size: int) -> np.ndarray:
    """Order |S| of every bitmask below ``size``."""
    masks = np.arange(size)
    return np.array([int(m).bit_count() for m in masks], dtype=np.int64)


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class Interaction:
    """One salient interaction: its kind, player bitmask and effect."""

    kind: Kind
    mask: int
    effect: float

    @property
    def order(self) -> int:
        return int(self.mask).bit_count()

    def players(self) -> tuple[int, ...]:
        return tuple(i for i in range(int(self.mask).bit_length()) if self.mask >> i & 1)


@dataclass
class AndOrDecomposition:
    """The sparsest AND-OR split of one game, with the quantities of METHOD.md."""

    values: np.ndarray
    and_effects: np.ndarray
    or_effects: np.ndarray
    q: np.ndarray
    p: np.ndarray
    noise_bound: float
    objective: float = field(init=False)
    matching_error: float = field(init=False)

    def __post_init__(self) -> None:
        self.objective = float(np.abs(self.and_effects[1:]).sum() + np.abs(self.or_effects[1:]).sum())
        fitted = reconstruct(self.and_effects, self.or_effects)
        self.matching_error = float(np.max(np.abs(self.values + self.q - fitted)))

    @property
    def n_players(self) -> int:
        return _num_players(len(self.values))

    def fitted(self) -> np.ndarray:
        """The AND-OR model's output on every mask, ``v(S) + q(S)``."""
        return reconstruct(self.and_effects, self.or_effects)

    @property
    def bias(self) -> float:
        """Order-0 terms ``I_and(0) + I_or(0)``: not an interaction."""
        return float(self.and_effects[0] + self.or_effects[0])

    def max_effect(self) -> float:
        """Largest |effect| over non-empty AND and OR interactions."""
        return float(max(np.abs(self.and_effects[1:]).max(initial=0.0), np.abs(self.or_effects[1:]).max(initial=0.0)))

    def salient(
        self, tau: float = 0.05, *, reference_max: float | None = None, absolute: float | None = None
    ) -> list[Interaction]:
        """Encoded interactions: ``|I| >= tau * max|I|`` (or an absolute threshold).

        ``reference_max`` replaces this game's own maximum, e.g. by the pre-SFT one.
        """
        threshold = salience_threshold(self.max_effect(), tau, reference_max=reference_max, absolute=absolute)
        found = []
        for kind, effects in (("AND", self.and_effects), ("OR", self.or_effects)):
            for mask in np.flatnonzero(np.abs(effects) >= threshold):
                if mask != 0:
                    found.append(Interaction(kind, int(mask), float(effects[mask])))
        return sorted(found, key=lambda it: (-abs(it.effect), it.kind, it.mask))


SALIENCE_TOLERANCE = 1e-9  # relative: far below any effect's float error, far above the rounding of tau * max


def salience_threshold(
    own_max: float, tau: float, *, reference_max: float | None = None, absolute: float | None = None
) -> float:
    """The effect size at and above which an interaction counts as encoded."""
    if absolute is not None:
        return float(absolute)
    if not 0 < tau <= 1:
        raise SftscopeError(f"tau must be in (0, 1], got {tau}")
    base = own_max if reference_max is None else reference_max
    # A game with no interaction at all encodes nothing. An effect equal to tau * max in exact decimals
    # (0.15 against 0.05 * 3.0 = 0.15000000000000002) counts: the threshold is lowered by a relative 1e-9.
    return tau * base * (1 - SALIENCE_TOLERANCE) if base > 0 else math.inf


# --------------------------------------------------------------------------- solver


Method = Literal["auto", "rowgen", "simplex", "ipm"]
METHODS = ("auto", "rowgen", "simplex", "ipm")


@lru_cache(maxsize=8)
def _constraint_matrix(n: int):
    """Columns: A(T) for every T, then B(T) for T != 0; rows: masks S. CSR, for row picking."""
    from scipy import sparse  # noqa: PLC0415

    size = 1 << n
    masks = np.arange(size)
    rows, cols = [], []
    for t in range(size):
        inside = masks[(masks & t) == t]  # S superset of T: A(T) contributes to v(S)
        rows.append(inside)
        cols.append(np.full(inside.size, t))
    for t in range(1, size):
        disjoint = masks[(masks & t) == 0]  # T inside N \ S: B(T) contributes
        rows.append(disjoint)
        cols.append(np.full(disjoint.size, size + t - 1))
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    k = sparse.csc_matrix((np.ones(r.size), (r, c)), shape=(size, 2 * size - 1))
    matrix = sparse.hstack([k, -k]).tocsr()  # x = x_plus - x_minus
    matrix.indices = matrix.indices.astype(np.int32)
    matrix.indptr = matrix.indptr.astype(np.int32)
    return matrix


TIE_BREAK = 1e-4  # cost added per unit of weight; the objective moves by at most (n + 0.6) * 1e-4


@lru_cache(maxsize=8)
def _column_costs(n_cols_half: int) -> np.ndarray:
    """L1 costs of the coefficients, nudged so that the LP has one optimum.

    Real games have many sparsest splits of equal L1 cost (an OR of two
    players is two ANDs of one minus an AND of two, ...), and which one a
    solver returns depends on its path, so salient sets would change between
    solvers and checkpoints for no reason in the model. A cost of
    ``1 + TIE_BREAK (|T| + 0.5 [OR] + u_T)`` (``u_T`` a fixed pseudo-random
    number in [0, 0.1)) picks among them: lower order first, then AND, then a
    fixed order. The L1 objective moves by at most ``(n + 0.6) * TIE_BREAK``
    relative (0.11% at n = 10). With 1e-5 instead of 1e-4, interior point and
    row generation still disagreed on 7 of 27 real games' salient sets.
    """
    size = (n_cols_half + 1) // 2
    order = popcount(size).astype(np.float64)
    jitter = np.random.default_rng(20260522).random(n_cols_half) * 0.1
    weight = np.concatenate([order, order[1:] + 0.5]) + jitter
    cost = 1.0 + TIE_BREAK * weight
    cost[0] = 0.0  # A(0) is the bias, free
    return cost


_BANNER_LOCK = threading.Lock()
_banner_shown = False


def _new_highs():
    """A fresh ``highspy.Highs``; the first one of a process prints HiGHS's banner to stdout, sent to /dev/null.

    The banner comes from C++ at construction, before any option can turn it off.
    """
    import highspy  # noqa: PLC0415

    global _banner_shown
    with _BANNER_LOCK:
        if _banner_shown:
            return highspy.Highs()
        sys.stdout.flush()
        saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        try:
            h = highspy.Highs()
            ctypes.CDLL(None).fflush(None)  # C buffers hold the banner until flushed
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            os.close(null)
        _banner_shown = True
        return h


def _highs(m: int, solver: str):
    """A HiGHS instance holding the ``2 m`` columns (x_plus, x_minus: costs, bounds) and no rows yet."""
    import highspy  # noqa: PLC0415

    h = _new_highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    h.setOptionValue("solver", solver)
    if solver == "simplex":
        h.setOptionValue("simplex_strategy", 1)  # dual: rows added later keep the basis dual feasible
        h.setOptionValue("presolve", "off")  # keep the basis between rounds
    cost = np.tile(_column_costs(m), 2)
    h.addCols(
        2 * m, cost, np.zeros(2 * m), np.full(2 * m, highspy.kHighsInf),
        0, np.zeros(2 * m, dtype=np.int32), np.zeros(0, dtype=np.int32), np.zeros(0),
    )
    return h


def _add_rows(h, matrix, rows: np.ndarray, values: np.ndarray, eps: float) -> None:
    sub = matrix[rows]
    h.addRows(len(rows), values[rows] - eps, values[rows] + eps, sub.nnz, sub.indptr[:-1], sub.indices, sub.data)


def _coefficients(h, m: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(h.getSolution().col_value)
    coef = x[:m] - x[m:]
    return coef[:size], np.concatenate([[0.0], coef[size:]])


def _fit(and_coef: np.ndarray, or_coef: np.ndarray) -> np.ndarray:
    return zeta_transform(and_coef) + complement(zeta_transform(or_coef))


def _optimal(h) -> bool:
    import highspy  # noqa: PLC0415

    return h.getModelStatus() == highspy.HighsModelStatus.kOptimal


def _solve_full(values: np.ndarray, eps: float, solver: str) -> tuple[np.ndarray, np.ndarray]:
    """The whole LP at once (every mask a row)."""
    size = values.size
    matrix = _constraint_matrix(_num_players(size))
    m = matrix.shape[1] // 2
    h = _highs(m, solver)
    _add_rows(h, matrix, np.arange(size), values, eps)
    h.run()
    if not _optimal(h):
        raise SftscopeError(f"AND-OR solver did not reach the optimum: {h.modelStatusToString(h.getModelStatus())}")
    return _coefficients(h, m, size)


def _solve_rowgen(
    values: np.ndarray, eps: float, iteration_budget: int | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Row generation: dual simplex on a few masks, adding the violated ones until none is.

    Sparse optima are pinned down by few masks, so most games finish after a
    few hundred pivots on a fraction of the rows; the check of every mask is
    one fast transform. The answer is the exact optimum of the whole LP.
    Returns None when ``iteration_budget`` simplex pivots did not suffice.
    """
    size = values.size
    n = _num_players(size)
    matrix = _constraint_matrix(n)
    m = matrix.shape[1] // 2
    h = _highs(m, "simplex")
    chosen = np.zeros(size, dtype=bool)
    order = popcount(size)
    new_rows = np.flatnonzero((order <= 1) | (order >= n - 1))  # start: the masks at both ends
    per_round = max(16, size // 16)
    spent = 0
    while True:
        chosen[new_rows] = True
        _add_rows(h, matrix, np.sort(new_rows).astype(np.int32), values, eps)
        if iteration_budget is not None:
            h.setOptionValue("simplex_iteration_limit", max(1, iteration_budget - spent))
        h.run()
        spent += h.getInfo().simplex_iteration_count
        if not _optimal(h):
            if iteration_budget is not None and spent >= iteration_budget:
                return None
            raise SftscopeError(f"AND-OR solver failed: {h.modelStatusToString(h.getModelStatus())}")
        coefficients = _coefficients(h, m, size)
        excess = np.abs(_fit(*coefficients) - values) - eps
        excess[chosen] = 0.0
        violated = np.flatnonzero(excess > 1e-9)
        if violated.size == 0:
            return coefficients
        new_rows = violated[np.argsort(-excess[violated], kind="stable")[:per_round]]


DENSE_SOLVER_MAX_PLAYERS = 12  # our interior point forms 2^n x 2^n matrices; above this, HiGHS's


def _solve_games(
    values: np.ndarray, eps: np.ndarray, method: Method, workers: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The exact coefficient-space LP of every game (rows of ``values``, unit scale); (A, B) with B(0) = 0.

    ``auto``: small games (n <= 6) at once by dual simplex; larger ones by row
    generation, and the games that turn out dense (2^(n-1) pivots did not
    suffice: a deterministic budget, so a game always takes the same path)
    together by the batched interior-point method of ``interior_point``.
    Sparse games finish in a few hundredths of a second, dense ones (real LLM
    games at n = 10 mostly are) in about half a second.
    """
    n = _num_players(values.shape[1])
    if method == "simplex" or (method == "auto" and n <= 6):
        return _each_game(lambda v, e: _solve_full(v, e, "simplex"), values, eps, workers)
    if method == "rowgen":
        return _each_game(lambda v, e: _solve_rowgen(v, e, None), values, eps, workers)
    if method == "ipm":
        solved = [None] * len(values)
    else:
        solved = _each_game(lambda v, e: _solve_rowgen(v, e, v.size // 2), values, eps, workers)
    dense = np.array([i for i, found in enumerate(solved) if found is None], dtype=int)
    for i, coefficients in zip(dense, _solve_dense(values[dense], eps[dense], dense, workers)):
        solved[i] = coefficients
    return solved


def _each_game(solve, values: np.ndarray, eps: np.ndarray, workers: int) -> list:
    """``solve(v, eps)`` for every game, on ``workers`` threads (HiGHS releases the GIL)."""
    if workers <= 1 or len(values) <= 1:
        return [solve(v, e) for v, e in zip(values, eps)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(solve, values, eps))


def _solve_dense(values: np.ndarray, eps: np.ndarray, names: np.ndarray, workers: int) -> list:
    """Dense games: our batched interior point; HiGHS's for games it cannot take or did not finish.

    ``names`` are the games' positions in the caller's batch, for the warning.
    """
    if len(values) == 0:
        return []
    n = _num_players(values.shape[1])
    ours = np.flatnonzero(eps > 0) if n <= DENSE_SOLVER_MAX_PLAYERS else np.zeros(0, dtype=int)
    solved = [None] * len(values)
    if ours.size:
        costs = _column_costs(2 * values.shape[1] - 1)
        and_coef, or_coef, _, converged = interior_point.solve_dense_games(values[ours], eps[ours], costs)
        for k, i in enumerate(ours):
            if converged[k]:
                solved[i] = (and_coef[k], or_coef[k])
            else:
                logger.warning("interior-point solver did not converge on game %d; solving it with HiGHS", names[i])
    rest = np.array([i for i, found in enumerate(solved) if found is None], dtype=int)
    for i, coefficients in zip(rest, _each_game(lambda v, e: _solve_full(v, e, "ipm"), values[rest], eps[rest], workers)):
        solved[i] = coefficients
    return solved


def _singletons_as_and(a_coef: np.ndarray, b_coef: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Report a one-player effect as AND: OR({i}) and AND({i}) are the same function.

    Under plain L1 costs any split of a one-player effect costs the same; the
    nudged costs already prefer AND, and this makes the convention exact
    whatever the solver's tolerances leave behind, so a sample's interactions
    stay comparable across checkpoints and solvers. The fit is unchanged and
    the L1 objective cannot grow.
    """
    a_coef, b_coef = a_coef.copy(), b_coef.copy()
    for i in range(_num_players(a_coef.size)):
        single = 1 << i
        # B({i}) adds B to v(S) for S without i = B - B * [i in S]
        a_coef[0] += b_coef[single]
        a_coef[single] -= b_coef[single]
        b_coef[single] = 0.0
    return a_coef, b_coef


def _decomposition(values: np.ndarray, a_coef: np.ndarray, b_coef: np.ndarray, eps: float, noise_bound: float):
    """Effects, ``p`` and ``q`` of one game from its LP coefficients (at the game's own scale)."""
    a_coef, b_coef = _singletons_as_and(a_coef, b_coef)
    fitted = _fit(a_coef, b_coef)
    q = np.clip(fitted - values, -eps, eps)
    v_and = zeta_transform(a_coef) - (fitted - values - q)  # absorb solver tolerance into AND
    v_or = values + q - v_and
    p = v_and - 0.5 * (values + q)
    return AndOrDecomposition(
        values=values.copy(),
        and_effects=mobius_transform(v_and),
        or_effects=or_effects_from(v_or),
        q=q,
        p=p,
        noise_bound=noise_bound,
    )


def _check_values(values: np.ndarray) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        where = np.argwhere(bad)[0]
        raise SftscopeError(f"game values contain NaN/inf (first at index {tuple(int(i) for i in where)})")


def and_or_interactions(
    values: np.ndarray, *, noise_bound: float = 0.02, workers: int | None = None, method: Method = "auto"
) -> AndOrDecomposition | list[AndOrDecomposition]:
    """Sparsest AND-OR interactions of one game (1-D) or a batch of games (2-D).

    ``noise_bound`` is lambda: ``|q(S)| <= lambda * |v(N) - v(0)|``. A batch is
    solved together: HiGHS on ``workers`` threads (default: all cores), dense
    games in one batched interior-point solve on torch's threads. The result
    holds the LP optimum (a simplex vertex, or within a relative gap of 1e-8 for
    games solved by interior point), and universal matching is verified on
    every game (``matching_error``). ``method`` picks the LP algorithm (see
    ``_solve_games``); all of them reach the same optimum.
    """
    array = np.asarray(values, dtype=np.float64)
    if array.ndim not in (1, 2):
        raise SftscopeError(f"values must be 1-D (one game) or 2-D (a batch), got shape {array.shape}")
    _num_players(array.shape[-1])
    _check_values(array)
    if noise_bound < 0:
        raise SftscopeError(f"noise_bound must be >= 0, got {noise_bound}")
    if method not in METHODS:
        raise SftscopeError(f"unknown AND-OR solver method {method!r}; choose from {', '.join(METHODS)}")
    games = array.reshape(-1, array.shape[-1])
    scale = np.abs(games).max(axis=1)
    eps = noise_bound * np.abs(games[:, -1] - games[:, 0])
    live = np.flatnonzero(scale > 0)  # a constant-zero game has no interactions
    workers = workers or min(len(live), os.cpu_count() or 1)
    # solved at unit scale: the solvers' tolerances are absolute
    solved = _solve_games(games[live] / scale[live, None], eps[live] / scale[live], method, workers)
    coefficients = [(np.zeros(games.shape[1]), np.zeros(games.shape[1]))] * len(games)
    for i, (a_coef, b_coef) in zip(live, solved):
        coefficients[i] = (a_coef * scale[i], b_coef * scale[i])
    results = [
        _checked(_decomposition(game, a_coef, b_coef, e, noise_bound))
        for game, (a_coef, b_coef), e in zip(games, coefficients, eps)
    ]
    return results[0] if array.ndim == 1 else results


def _checked(result: AndOrDecomposition) -> AndOrDecomposition:
    scale = max(1.0, float(np.max(np.abs(result.values))))
    if result.matching_error > 1e-8 * scale:
        raise SftscopeError(f"universal matching failed: error {result.matching_error:.3g}")
    return result


# --------------------------------------------------------------------------- reference solver


def reference_sgd_solve(
    values: np.ndarray,
    *,
    noise_bound: float = 0.02,
    iterations: int = 20_000,
    lr: float = 1e-3,
    momentum: float = 0.9,
) -> AndOrDecomposition:
    """The published way: SGD on ``p, q`` through dense ``2^n x 2^n`` matrices.

    Learning rate decays log-uniformly from ``lr`` to ``lr / 10``; ``q`` is
    clamped after each step. Kept only as the slow baseline for benchmarks and
    tests (it is O(4^n) per step).
    """
    import torch  # noqa: PLC0415

    v = torch.as_tensor(np.asarray(values, dtype=np.float64))
    size = v.numel()
    _num_players(size)
    masks = torch.arange(size)
    subset = (masks[None, :] & masks[:, None]) == masks[None, :]  # [T, L]: L subset of T
    sign = (-1.0) ** (popcount(size)[:, None] - popcount(size)[None, :])
    mob = torch.as_tensor(np.where(subset.numpy(), sign, 0.0))
    mob_or = -mob.flip(1)  # I_or(T) = -sum_L mob[T, L] v_or(N \ L)
    eps = noise_bound * float(abs(v[-1] - v[0]))
    p = torch.zeros(size, dtype=torch.float64, requires_grad=True)
    q = torch.zeros(size, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([p, q], lr=lr, momentum=momentum)
    lrs = np.logspace(math.log10(lr), math.log10(lr / 10), iterations)
    for step in range(iterations):
        for group in opt.param_groups:
            group["lr"] = float(lrs[step])
        opt.zero_grad()
        base = 0.5 * (v + q)
        loss = (mob @ (base + p))[1:].abs().sum() + (mob_or @ (base - p))[1:].abs().sum()
        loss.backward()
        opt.step()
        with torch.no_grad():
            q.clamp_(-eps, eps)
    with torch.no_grad():
        qa = q.numpy().copy()
        v_and = 0.5 * (v.numpy() + qa) + p.numpy()
        v_or = 0.5 * (v.numpy() + qa) - p.numpy()
    return AndOrDecomposition(
        values=np.asarray(values, dtype=np.float64).copy(),
        and_effects=mobius_transform(v_and),
        or_effects=or_effects_from(v_or),
        q=qa,
        p=p.detach().numpy().copy(),
        noise_bound=noise_bound,
    )
