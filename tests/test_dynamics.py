import math

import pandas as pd
import pytest

from sftscope import SftscopeError
from sftscope.dynamics import (
    dynamics_table, encoded, generalizability, interval_flows, order_distribution, sample_types, summarize,
    type_utility, uncancelled_ratio,
)
from sftscope.stopping import StageRule, stage_boundary

from helpers import effects_frame


def test_type_partition():
    omegas = {
        0: {("AND", 1): 1.0, ("AND", 3): 0.5, ("OR", 6): -0.4},
        2: {("AND", 1): 1.2, ("OR", 6): -0.3, ("AND", 12): 0.2},
        4: {("AND", 1): 1.5, ("AND", 3): 0.6, ("AND", 12): 0.2, ("AND", 7): 0.1},
    }
    types = sample_types(omegas)
    assert [t.step for t in types] == [0, 2, 4]
    for t in types:
        omega0, omega_t = set(omegas[0]), set(omegas[t.step])
        assert set(t.preserved) | set(t.removed) == omega0 and not set(t.preserved) & set(t.removed)
        assert set(t.preserved) | set(t.emerged) == omega_t and not set(t.preserved) & set(t.emerged)
    last = types[-1]
    assert set(last.preserved) == {("AND", 1)}  # ("AND", 3) left at step 2: not preserved even if back
    assert last.removed == {("AND", 3): 0.5, ("OR", 6): -0.4}  # effects at t_0
    assert last.emerged == {("AND", 3): 0.6, ("AND", 12): 0.2, ("AND", 7): 0.1}
    assert last.preserved[("AND", 1)] == 1.5  # effect at t


def test_metrics_known_answers():
    assert uncancelled_ratio([1.0, -1.0]) == 0.0
    assert uncancelled_ratio([2.0, 1.0]) == 1.0
    assert uncancelled_ratio([3.0, -1.0]) == pytest.approx(0.5)
    assert math.isnan(uncancelled_ratio([]))
    dist = order_distribution({("AND", 1): 2.0, ("OR", 2): -1.0, ("AND", 3): 0.5, ("OR", 7): -0.25}, 3)
    assert dist.to_dict("list") == {"order": [1, 2, 3], "strength_pos": [2.0, 0.5, 0.0],
                                    "strength_neg": [1.0, 0.0, 0.25], "count_pos": [1, 1, 0], "count_neg": [1, 0, 1]}
    mine = {("AND", 1): 2.0, ("AND", 3): -1.0, ("OR", 5): 1.0, ("AND", 6): 1.0}
    theirs = {("AND", 1): 0.3, ("AND", 3): 0.4, ("AND", 5): 1.0}
    assert generalizability(mine, theirs) == (0.25, pytest.approx(2.0 / 5.0))
    assert type_utility(0.0, {}) == pytest.approx(math.log(2))
    assert type_utility(1.0, {("AND", 1): 2.0}) == pytest.approx(-math.log(1 / (1 + math.exp(-3))))


def test_salience_modes():
    frame = effects_frame({("s", 0): {("AND", 1): 1.0, ("AND", 2): 0.04, ("OR", 3): -0.06},
                           ("s", 1): {("AND", 1): 10.0, ("AND", 2): 0.2}})
    rel = encoded(frame, tau=0.05)
    assert set(zip(rel.step, rel.bitmask)) == {(0, 1), (0, 3), (1, 1)}
    init = encoded(frame, tau=0.05, mode="initial")
    assert set(zip(init.step, init.bitmask)) == {(0, 1), (0, 3), (1, 1), (1, 2)}
    absolute = encoded(frame, mode="absolute", absolute=0.05)
    assert set(zip(absolute.step, absolute.bitmask)) == {(0, 1), (0, 3), (1, 1), (1, 2)}
    assert (encoded(frame)["order"] > 0).all()  # the bias is never an interaction


def test_dynamics_table_and_flows():
    spec = {
        ("a", 0): {("AND", 1): 1.0, ("AND", 7): 0.5, ("AND", 6): -0.5},
        ("a", 1): {("AND", 1): 1.1},
        ("a", 2): {("AND", 1): 1.2, ("AND", 5): 0.3, ("OR", 3): 0.3, ("AND", 15): -0.2},
    }
    target = effects_frame(spec)
    base = effects_frame({("a", 9): {("AND", 1): 0.7, ("AND", 5): -0.2}}, model="gemma")
    per_sample = dynamics_table(pd.concat([target, base]), baseline_model="gemma")
    last = per_sample[per_sample.step == 2].set_index("type")
    assert last.loc["preserved", "count"] == 1 and last.loc["preserved", "r_gen"] == 1.0
    assert last.loc["removed", "count"] == 2 and last.loc["removed", "rho"] == 0.0
    assert last.loc["emerged", "count"] == 3 and last.loc["emerged", "r_gen"] == 0.0
    assert last.loc["removed", "mean_order"] == 2.5
    flows = interval_flows(target)
    columns = ["step", "step_from", "emerged", "removed", "emerged_strength", "removed_strength"]
    assert flows[columns].to_dict("list") == {"step": [1, 2], "step_from": [0, 1], "emerged": [0, 3], "removed": [2, 0],
                                              "emerged_strength": [0.0, pytest.approx(0.8)],
                                              "removed_strength": [1.0, 0.0]}
    assert flows["emerged_distinct"].tolist() == [0, 3]
    assert math.isnan(flows["emerged_rho"][0])
    assert flows["emerged_rho"][1] == pytest.approx(0.4 / 0.8)  # 0.3 + 0.3 - 0.2 over 0.8
    assert set(summarize(per_sample)["type"]) == {"preserved", "removed", "emerged"}
    with pytest.raises(SftscopeError, match="baseline model 'qwen'"):
        dynamics_table(target, baseline_model="qwen")


def test_stage_rules_on_constructed_trajectories():
    flows = pd.DataFrame({"step": [1, 2, 4, 8, 16, 32], "step_from": [0, 1, 2, 4, 8, 16],
                          "removed": [10, 8, 6, 1, 0, 1], "emerged": [0, 1, 2, 6, 12, 20]})
    assert stage_boundary(flows, StageRule("crossover")) == 4  # from step 4 on, emergence outpaces removal
    assert stage_boundary(flows, StageRule("cumulative", 0.9)) == 4  # 24 of 26 removals by step 4
    assert stage_boundary(flows, StageRule("cumulative", 0.95)) == 8  # 25 of 26 by step 8
    assert stage_boundary(flows, StageRule("cumulative", 0.5)) == 2
    never = flows.assign(emerged=0)
    assert stage_boundary(never, StageRule("crossover")) == 32  # never crosses: denoising not over
    assert StageRule().kind == "cumulative"
    with pytest.raises(SftscopeError):
        stage_boundary(flows.iloc[:0])


def test_missing_columns_are_named():
    with pytest.raises(SftscopeError, match="lacks columns: bitmask"):
        encoded(pd.DataFrame({"sample": [], "step": [], "kind": [], "order": [], "effect": []}))


def test_order_table_pools_samples():
    from sftscope.dynamics import order_table

    spec = {("a", 0): {("AND", 1): 1.0, ("AND", 3): -0.5}, ("b", 0): {("AND", 1): 2.0, ("OR", 6): 0.5}}
    table = order_table(effects_frame(spec))
    preserved = table[(table.step == 0) & (table.type == "preserved")].set_index("order")
    # averaged over the two samples as in the paper; the sums stay as *_total
    assert preserved.loc[1, "strength_pos_total"] == 3.0 and preserved.loc[1, "count_pos_total"] == 2
    assert preserved.loc[1, "strength_pos"] == 1.5 and preserved.loc[1, "count_pos"] == 1
    assert preserved.loc[2, "strength_neg"] == 0.25 and preserved.loc[2, "strength_pos"] == 0.25


def test_early_and_late_emerged_split_at_the_boundary():
    from sftscope.findings import early_late_quality, final_types

    spec = {("s", 0): {("AND", 1): 1.0, ("AND", 6): 0.5},
            ("s", 4): {("AND", 1): 1.0, ("AND", 2): 0.8},                     # AND 2 emerges early
            ("s", 8): {("AND", 1): 1.0, ("AND", 2): 0.9, ("AND", 12): 0.4, ("OR", 12): -0.4}}  # late pair cancels
    target = effects_frame(spec)
    base = effects_frame({("s", 9): {("AND", 2): 0.3}}, model="baseline")
    effects = pd.concat([target, base])
    types = final_types(effects, boundary=4)
    sets = types[("train", "s")]
    assert set(sets["early_emerged"]) == {("AND", 2)}
    assert set(sets["late_emerged"]) == {("AND", 12), ("OR", 12)}
    assert set(sets["removed"]) == {("AND", 6)} and set(sets["preserved"]) == {("AND", 1)}
    quality = early_late_quality(effects, types)
    assert quality["early_emerged"] == {"r_gen": 1.0, "rho": 1.0}
    assert quality["late_emerged"] == {"r_gen": 0.0, "rho": 0.0}


def test_an_exact_decimal_tie_with_the_threshold_is_salient():
    # 0.05 x 3.0 = 0.15000000000000002 in floats: 0.15 sits on the threshold and must count, as in decompose
    frame = effects_frame({("s", 0): {("AND", 1): 3.0, ("AND", 2): 0.15, ("AND", 4): 0.149}})
    kept = set(encoded(frame, tau=0.05)["bitmask"])
    assert kept == {1, 2}
    initial = set(encoded(frame, tau=0.05, mode="initial")["bitmask"])
    assert initial == {1, 2}
