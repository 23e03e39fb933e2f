"""Our AND-OR solver against the reference SGD solver on the same games, in one run.

    python benchmarks/decompose.py [--n 10] [--games 4] [--iterations 20000] [--source planted|smollm2]

Games are either planted sparse AND/OR interactions plus small noise
(``planted``), or real ones: SmolLM2-135M-Instruct's log-odds on the shipped
data set's test prompts, computed first with the prefix engine and not timed
(``smollm2``). Prints per-game times, the time ratio (reference / ours) and the
objective ratio (ours / reference; below 1 means ours is sparser). Ours is one
batched call over all cores, as the product calls it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from sftscope.decompose import and_or_interactions, reference_sgd_solve


def planted_game(n: int, rng: np.random.Generator, k: int = 12, noise: float = 0.05) -> np.ndarray:
    size = 1 << n
    masks = np.arange(size)
    values = np.zeros(size)
    for _ in range(k):
        order = int(rng.integers(1, 4))
        mask = int(sum(1 << int(i) for i in rng.choice(n, order, replace=False)))
        effect = rng.normal() * 2
        values += effect * (((masks & mask) == mask) if rng.random() < 0.5 else ((masks & mask) != 0))
    return values + noise * rng.standard_normal(size)


def smollm2_games(n: int, count: int) -> np.ndarray:
    """Real games: the embedded model on the first test prompts with at least n usable words."""
    from sftscope import MaskedGame, PrefixEngine, SftscopeError, baseline_vector, select_players
    from sftscope.data import load_splits
    from sftscope.models import load_model_and_tokenizer
    from sftscope.players import target_token, tokenize_prompt

    model, tokenizer = load_model_and_tokenizer("smollm2-135m-instruct", dtype="float32")
    baseline = baseline_vector(model, tokenizer, "mean")
    games = []
    for pair in load_splits("emotions")[1]:
        if len(games) == count:
            break
        try:
            players = select_players(model, tokenizer, pair.prompt, pair.response, n)
        except SftscopeError:  # fewer usable words than n
            continue
        rendered = tokenize_prompt(tokenizer, pair.prompt)
        game = MaskedGame(tuple(rendered.input_ids), players.token_spans, target_token(tokenizer, pair.response))
        games.append(PrefixEngine(model, baseline).values(game))
    return np.stack(games)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--games", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--lr", type=float, default=1e-4)  # best of {1e-2..3e-5} at n = 8
    parser.add_argument("--source", choices=["planted", "smollm2"], default="planted")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    if args.source == "planted":
        games = np.stack([planted_game(args.n, rng) for _ in range(args.games)])
    else:
        games = smollm2_games(args.n, args.games)

    singles = []
    for game in games:  # one at a time, to show the spread; not the headline
        t0 = time.perf_counter()
        and_or_interactions(game)
        singles.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    ours = and_or_interactions(games)  # one batched call, all cores
    t_ours = time.perf_counter() - t0

    t_ref, ref = 0.0, []
    for game in games:
        t0 = time.perf_counter()
        ref.append(reference_sgd_solve(game, iterations=args.iterations, lr=args.lr))
        t_ref += time.perf_counter() - t0

    obj_ours = np.array([r.objective for r in ours])
    obj_ref = np.array([r.objective for r in ref])
    print(f"n = {args.n}, {args.games} {args.source} games, reference = dense SGD x {args.iterations} steps, lr {args.lr}")
    print(f"ours, one game at a time (s): {np.round(singles, 3).tolist()}")
    print(f"reference: {t_ref / args.games:8.3f} s/game   objective mean {obj_ref.mean():.3f}")
    print(f"ours:      {t_ours / args.games:8.3f} s/game   objective mean {obj_ours.mean():.3f}")
    print(f"time ratio (reference / ours): {t_ref / t_ours:.1f}x")
    print(f"objective ratio (ours / reference) per game: {np.round(obj_ours / obj_ref, 3).tolist()}")
    print(f"max matching error: ours {max(r.matching_error for r in ours):.1e}, "
          f"reference {max(r.matching_error for r in ref):.1e}")
    dense_paths(games)


def dense_paths(games: np.ndarray) -> None:
    """Every game through the dense path: our batched interior point against HiGHS's, both on all cores."""
    from concurrent.futures import ThreadPoolExecutor

    from sftscope.decompose import _solve_full

    scale = np.abs(games).max(axis=1)
    eps = 0.02 * np.abs(games[:, -1] - games[:, 0]) / scale
    t0 = time.perf_counter()
    ours = and_or_interactions(games, method="ipm")
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda i: _solve_full(games[i] / scale[i], eps[i], "ipm"), range(len(games))))
    t_highs = time.perf_counter() - t0
    highs = and_or_interactions(games, method="simplex")  # the exact vertex, for the gap
    gap = max(abs(a.objective / b.objective - 1) for a, b in zip(ours, highs))
    print(f"dense path on every game: ours {t_ours / len(games):.3f} s/game, HiGHS interior point "
          f"{t_highs / len(games):.3f} s/game, ratio {t_highs / t_ours:.1f}x, max objective gap to the vertex {gap:.1e}")


if __name__ == "__main__":
    main()
