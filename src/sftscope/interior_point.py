"""A batched primal-dual interior-point method for the AND-OR LP of dense games.

Why by hand: real LLM games at n = 10 have optima with hundreds of non-zero
coefficients, so simplex needs thousands of pivots, and HiGHS's
interior-point method, which solves its normal equations iteratively, takes
about 1.5 s a game. Here the normal matrix has a closed form on the subset
lattice,

    M[S, S'] = zeta(d_and)[S & S'] + zeta(d_or)[~S & ~S'] + diag(d_noise)[S, S'],

and since ``(S & S', S | S')`` takes only 3^n values, an iteration costs one
gather from a 3^n table and one dense Cholesky factorisation per game;
everything else is fast transforms, vectorised over the batch.
Mehrotra's predictor-corrector with Gondzio's centrality correctors reaches a
relative gap of 1e-8 in 15-25 iterations.

The LP (in ``decompose``'s coefficient space, one game per row of the batch):

    minimise   c . (a+ + a- + b+ + b-)
    subject to zeta(a+ - a-) + flip(zeta(b+ - b-)) + bias + s = v + eps,
               0 <= s <= 2 eps,  a+-, b+- >= 0,  bias free.

``s`` is ``eps - q``. Index 0 of ``a`` and ``b`` (the empty set) duplicates
the bias column; it costs 1 and so ends at 0. The answer is the optimum to a
relative gap of 1e-8, not a vertex: coefficients with near-equal costs can
differ from a simplex vertex by ~1e-4 of the largest effect.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch

from .errors import SftscopeError

STEP_FRACTION = 0.995  # of the way to the boundary
CENTRALITY_CORRECTORS = 2
REFINE_BELOW_MU = 1e-6  # one step of iterative refinement once the normal matrix gets ill-conditioned
STALL_MERIT = 1e-6  # when progress stops below this, the best iterate is the answer
MEMORY_PER_CHUNK = 2**29  # bytes of normal matrices held at once: 4 games at n = 12
MAX_CHUNK = 8  # games per batch at n <= 11


class _Iterate(NamedTuple):
    """Primal (x, s, u, bias) and dual (z, zs, ws, y) variables of a batch; also a step."""

    x: torch.Tensor  # (B, 4, size): a+, a-, b+, b-
    s: torch.Tensor  # (B, size): lower slack of the noise box
    u: torch.Tensor  # (B, size): 2 eps - s, kept apart so that it keeps its precision near 0
    bias: torch.Tensor  # (B, 1)
    z: torch.Tensor
    zs: torch.Tensor
    ws: torch.Tensor
    y: torch.Tensor

    def pick(self, index: torch.Tensor) -> _Iterate:
        return _Iterate(*(t[index] for t in self))

    def products(self, step: _Iterate | None = None, primal=None, dual=None) -> tuple[torch.Tensor, ...]:
        """Complementarity products x z, s zs, u ws, optionally after a step of lengths (primal, dual)."""
        if step is None:
            return self.x * self.z, self.s * self.zs, self.u * self.ws
        return (
            (self.x + primal[:, :, None] * step.x) * (self.z + dual[:, :, None] * step.z),
            (self.s + primal * step.s) * (self.zs + dual * step.zs),
            (self.u + primal * step.u) * (self.ws + dual * step.ws),
        )

    def max_steps(self, step: _Iterate) -> tuple[torch.Tensor, torch.Tensor]:
        """Longest primal and dual step lengths (<= 1) that keep every bounded variable >= 0."""
        primal = torch.stack([_max_step(self.x, step.x), _max_step(self.s, step.s), _max_step(self.u, step.u)])
        dual = torch.stack([_max_step(self.z, step.z), _max_step(self.zs, step.zs), _max_step(self.ws, step.ws)])
        return primal.amin(0)[:, None], dual.amin(0)[:, None]

    def moved(self, step: _Iterate, primal: torch.Tensor, dual: torch.Tensor) -> _Iterate:
        p3, d3 = primal[:, :, None], dual[:, :, None]
        return _Iterate(
            self.x + p3 * step.x, self.s + primal * step.s, self.u + primal * step.u, self.bias + primal * step.bias,
            self.z + d3 * step.z, self.zs + dual * step.zs, self.ws + dual * step.ws, self.y + dual * step.y,
        )


@lru_cache(maxsize=4)
def _lattice_indices(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where M reads its entries: M[S, S'] = P[pair(S, S')] with P[k] = zeta_and[meet_k] + zeta_or[~join_k].

    ``S & S'`` and ``S | S'`` together take only 3^n values (per player: in
    neither, in one, in both), so M is one gather from a small table.
    Returns (pair index of every (S, S'), meet_k, complement of join_k).
    """
    size = 1 << n
    masks = torch.arange(size)
    digits = torch.zeros(size, size, dtype=torch.long)
    power = 1
    for i in range(n):
        bit = (masks >> i) & 1
        digits += (bit[:, None] + bit[None, :]) * power
        power *= 3
    meet = torch.zeros(power, dtype=torch.long)
    join = torch.zeros(power, dtype=torch.long)
    ids = torch.arange(power)
    for i in range(n):
        digit = (ids // 3**i) % 3
        meet |= (digit == 2).long() << i
        join |= (digit >= 1).long() << i
    return digits.reshape(-1), meet, (size - 1) ^ join


def _butterfly(x: torch.Tensor, superset: bool) -> torch.Tensor:
    x = x.clone()
    size = x.shape[-1]
    lead = x.shape[:-1]
    for i in range(size.bit_length() - 1):
        view = x.view(lead + (size >> (i + 1), 2, 1 << i))
        if superset:
            view[..., 0, :] += view[..., 1, :]
        else:
            view[..., 1, :] += view[..., 0, :]
    return x


def _apply(x: torch.Tensor) -> torch.Tensor:
    """A x for x = [a+, a-, b+, b-] of shape (B, 4, size)."""
    return _butterfly(x[:, 0] - x[:, 1], False) + _butterfly(x[:, 2] - x[:, 3], False).flip(-1)


def _apply_transposed(y: torch.Tensor) -> torch.Tensor:
    """A^T y, shape (B, 4, size)."""
    on_and = _butterfly(y, True)
    on_or = _butterfly(y.flip(-1), True)
    return torch.stack([on_and, -on_and, on_or, -on_or], dim=1)


def _max_step(value: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Largest alpha <= 1 per game keeping ``value + alpha * direction >= 0``."""
    ratio = torch.where(direction < 0, -value / direction, torch.full_like(value, torch.inf))
    return ratio.flatten(1).amin(dim=1).clamp(max=1.0)


def solve_dense_games(
    values: np.ndarray, eps: np.ndarray, costs: np.ndarray, *, tol: float = 1e-8, max_iter: int = 60
) -> tuple[np.ndarray, np.ndarray, list[int], np.ndarray]:
    """The LP optimum of every game in ``values`` (B, 2^n) with noise bounds ``eps`` (B,), all > 0.

    ``costs`` are the ``2 * 2^n - 1`` coefficient costs of ``decompose._column_costs``
    (AND(T) for every T, then OR(T) for T != 0). Returns the AND and OR
    coefficients (B, 2^n), with the bias in AND[0] and OR[0] = 0 (as
    ``decompose._solve_games``), the iterations each game took, and whether
    each game converged (the caller solves the others another way). Scale
    games to max |v| = 1: the tolerances are absolute there. Games do not
    interact: a game's answer does not depend on the others in the batch.
    """
    values = np.asarray(values, dtype=np.float64)
    eps = np.asarray(eps, dtype=np.float64)
    if values.ndim != 2 or eps.shape != values.shape[:1]:
        raise SftscopeError(f"expected values (B, 2^n) and eps (B,), got {values.shape} and {eps.shape}")
    if not (eps > 0).all():
        raise SftscopeError("the interior-point solver needs a positive noise bound for every game")
    size = values.shape[1]
    chunk = max(1, min(MAX_CHUNK, MEMORY_PER_CHUNK // (8 * size * size)))
    parts = [_solve_chunk(values[k : k + chunk], eps[k : k + chunk], costs, tol, max_iter)
             for k in range(0, len(values), chunk)]
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        [i for p in parts for i in p[2]],
        np.concatenate([p[3] for p in parts]),
    )


def _solve_chunk(values, eps, costs, tol, max_iter):
    v = torch.as_tensor(values)
    e = torch.as_tensor(eps)[:, None]
    batch, size = v.shape
    pairs, meet, outside_join = _lattice_indices(size.bit_length() - 1)
    cost = torch.as_tensor(np.asarray(costs, dtype=np.float64))
    c_and = cost[:size].clone()
    c_and[0] = 1.0
    c_or = torch.cat([torch.ones(1, dtype=torch.float64), cost[size:]])
    c_all = torch.stack([c_and, c_and, c_or, c_or])[None].expand(batch, 4, size)
    rhs_all = v + e

    # start: every coefficient pair at 1, the noise in the middle of its box, all products 1
    point = _Iterate(
        x=torch.ones(batch, 4, size, dtype=torch.float64),
        s=e.expand(batch, size).clone(),
        u=e.expand(batch, size).clone(),
        bias=torch.zeros(batch, 1, dtype=torch.float64),
        z=c_all.clone(),
        zs=(1.0 / e).expand(batch, size).clone(),
        ws=(1.0 / e).expand(batch, size).clone(),
        y=torch.zeros(batch, size, dtype=torch.float64),
    )
    count = 6 * size  # complementarity pairs per game
    best = _Iterate(*(t.clone() for t in point))
    best_merit = torch.full((batch,), torch.inf, dtype=torch.float64)
    done = torch.zeros(batch, dtype=torch.bool)
    iterations = torch.zeros(batch, dtype=torch.long)
    # reused every iteration: fresh pages for 8 MB matrices cost as much as filling them
    factor_buf = torch.empty(batch, size, size, dtype=torch.float64)

    for _ in range(max_iter):
        live = torch.nonzero(~done).flatten()
        p = point.pick(live)
        c, rhs, e2 = c_all[live], rhs_all[live], 2 * e[live]
        rp = rhs - _apply(p.x) - p.bias - p.s
        ru = e2 - p.s - p.u
        rd = c - _apply_transposed(p.y) - p.z
        rds = -p.y - p.zs + p.ws
        rd0 = -p.y.sum(dim=1, keepdim=True)

        xz, szs, uws = p.products()
        mu = (xz.flatten(1).sum(1) + szs.sum(1) + uws.sum(1))[:, None] / count
        pobj = (c * p.x).flatten(1).sum(1)
        dobj = (rhs * p.y).sum(1) - e2[:, 0] * p.ws.sum(1)
        gap = (pobj - dobj).abs() / (1 + pobj.abs())
        primal_res = torch.maximum(rp.abs().amax(1), ru.abs().amax(1)) / (1 + rhs.abs().amax(1))
        dual_res = torch.maximum(rd.abs().flatten(1).amax(1), rds.abs().amax(1)).maximum(rd0.abs()[:, 0])
        merit = torch.maximum(torch.maximum(gap, primal_res), dual_res)
        improved = merit < best_merit[live]
        best_merit[live[improved]] = merit[improved]
        for name, value in zip(_Iterate._fields, p):
            getattr(best, name)[live[improved]] = value[improved]
        # converged, or past the point where rounding spoils the normal equations
        finished = (merit < tol) | ((best_merit[live] < STALL_MERIT) & (merit > 10 * best_merit[live]))
        if finished.all():
            done[live] = True
            break
        if finished.any():
            done[live[finished]] = True
            keep = ~finished
            live, p, c, rhs, e2 = live[keep], p.pick(keep), c[keep], rhs[keep], e2[keep]
            rp, ru, rd, rds, rd0, mu = rp[keep], ru[keep], rd[keep], rds[keep], rd0[keep], mu[keep]
            xz, szs, uws = xz[keep], szs[keep], uws[keep]
        iterations[live] += 1

        theta_x = p.x / p.z
        theta_s = 1.0 / (p.zs / p.s + p.ws / p.u)
        k = live.numel()
        factor = factor_buf[:k]
        d_and = theta_x[:, 0] + theta_x[:, 1]
        d_or = theta_x[:, 2] + theta_x[:, 3]
        zeta_and, zeta_or = _butterfly(d_and, False), _butterfly(d_or, False)

        def normal_matrix(out: torch.Tensor, games=slice(None)) -> None:
            table = zeta_and[games][:, meet] + zeta_or[games][:, outside_join]
            torch.index_select(table, 1, pairs, out=out.view(out.shape[0], -1))
            out.diagonal(dim1=1, dim2=2).add_(theta_s[games])

        def times_matrix(y: torch.Tensor) -> torch.Tensor:
            """M y for y of shape (k, size, r), through the transforms: M = Z D_and Z^T + J Z D_or Z^T J + D_noise."""
            cols = y.mT
            product = _butterfly(d_and[:, None] * _butterfly(cols, True), False)
            product += _butterfly(d_or[:, None] * _butterfly(cols.flip(-1), True), False).flip(-1)
            return (product + theta_s[:, None] * cols).mT

        normal_matrix(factor)
        broken = _cholesky(factor, normal_matrix)
        if broken.any():  # such a game keeps its best iterate (converged only if that is good enough)
            done[live[broken]] = True
            factor[broken] = torch.eye(size, dtype=torch.float64)
        refine = (mu < REFINE_BELOW_MU)[:, :, None]  # per game, so that games do not interact
        ones = torch.ones_like(p.y)

        def newton(r1, r2, r3):
            """The step solving the linearised KKT system with complementarity right-hand sides r1, r2, r3."""
            r3 = r3 - p.ws * ru
            rtx = rd - r1 / p.x
            rts = rds - r2 / p.s + r3 / p.u
            h = rp + _apply(theta_x * rtx) + theta_s * rts
            wanted = torch.stack([h, ones], dim=2)
            sol = _solve(factor, wanted)
            if refine.any():
                sol = torch.where(refine, sol + _solve(factor, wanted - times_matrix(sol)), sol)
            p1, p2 = sol[..., 0], sol[..., 1]
            dbias = (p1.sum(1, keepdim=True) - rd0) / p2.sum(1, keepdim=True)  # keeps sum(y) = 0
            dy = p1 - dbias * p2
            dx = theta_x * (_apply_transposed(dy) - rtx)
            ds = theta_s * (dy - rts)
            return _Iterate(
                x=dx, s=ds, u=ru - ds, bias=dbias,
                z=(r1 - p.z * dx) / p.x, zs=(r2 - p.zs * ds) / p.s, ws=(r3 + p.ws * ds) / p.u, y=dy,
            )

        # predictor (affine scaling), then Mehrotra's corrector aiming at sigma * mu
        affine = newton(-xz, -szs, -uws)
        ap, ad = p.max_steps(affine)
        after = p.products(affine, ap, ad)
        mu_aff = (after[0].flatten(1).sum(1) + after[1].sum(1) + after[2].sum(1))[:, None] / count
        target = (mu_aff / mu).clamp(max=1.0) ** 3 * mu
        rhs_c = [
            target[:, :, None] - xz - affine.x * affine.z,
            target - szs - affine.s * affine.zs,
            target - uws - affine.u * affine.ws,
        ]
        step = newton(*rhs_c)
        ap, ad = p.max_steps(step)
        for _ in range(CENTRALITY_CORRECTORS):
            # Gondzio: aim at a longer step, pulling outlying products back into [0.1, 10] * target
            tp, td = (1.5 * ap + 0.1).clamp(max=1.0), (1.5 * ad + 0.1).clamp(max=1.0)
            targets = (target[:, :, None], target, target)
            fixes = [
                (prod.clamp(min=0.1 * t, max=10 * t) - prod).clamp(min=-10 * t)
                for prod, t in zip(p.products(step, tp, td), targets)
            ]
            trial_rhs = [r + f for r, f in zip(rhs_c, fixes)]
            trial = newton(*trial_rhs)
            tap, tad = p.max_steps(trial)
            better = ((tap + tad) >= (ap + ad) * 1.01 + 0.02)[:, 0]
            if not better.any():
                break

            def choose(new, old):
                return torch.where(better.view((-1,) + (1,) * (new.dim() - 1)), new, old)

            step = _Iterate(*(choose(a, b) for a, b in zip(trial, step)))
            rhs_c = [choose(a, b) for a, b in zip(trial_rhs, rhs_c)]
            ap, ad = choose(tap, ap), choose(tad, ad)
        new = p.moved(step, STEP_FRACTION * ap, STEP_FRACTION * ad)
        for name, value in zip(_Iterate._fields, new):
            getattr(point, name)[live] = value

    x, bias = best.x, best.bias
    and_coef = x[:, 0] - x[:, 1]
    and_coef[:, 0] = bias[:, 0] + (x[:, 0, 0] - x[:, 1, 0]) + (x[:, 2, 0] - x[:, 3, 0])
    or_coef = x[:, 2] - x[:, 3]
    or_coef[:, 0] = 0.0
    return and_coef.numpy(), or_coef.numpy(), iterations.tolist(), (best_merit < STALL_MERIT).numpy()


def _solve(factor: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """(L L^T)^-1 rhs by two triangular solves; only the lower triangle of ``factor`` is read."""
    half = torch.linalg.solve_triangular(factor, rhs, upper=False)
    return torch.linalg.solve_triangular(factor.mT, half, upper=True)


def _cholesky(factor: torch.Tensor, rebuild) -> torch.Tensor:
    """Lower Cholesky factors of the matrices in ``factor``, in place (upper triangles left as they are).

    LAPACK's potrf in place: torch's own Cholesky zeroes the other triangle,
    which costs more than the factorisation here. A matrix that lost
    definiteness to rounding is rebuilt (``rebuild(out, games)``) with a
    growing diagonal shift; returns which games stayed indefinite.
    """
    from scipy.linalg import lapack  # noqa: PLC0415

    broken = torch.zeros(factor.shape[0], dtype=torch.bool)
    for g, one in enumerate(factor.numpy()):
        scale = float(one.diagonal().max())
        # a C-ordered symmetric matrix is its own transpose in Fortran order: its upper factor is our lower one
        _, info = lapack.dpotrf(one.T, lower=0, clean=0, overwrite_a=1)
        shift = 1e-14 * scale
        while info > 0 and shift <= 1e-2 * scale:
            rebuild(factor[g : g + 1], slice(g, g + 1))
            one[np.diag_indices_from(one)] += shift
            _, info = lapack.dpotrf(one.T, lower=0, clean=0, overwrite_a=1)
            shift *= 100
        broken[g] = info != 0
    return broken
