"""The five findings can fail under every boundary rule; the metric edge cases give the answers computed by hand."""

import math

import pandas as pd
import pytest

from helpers import effects_frame
from sftscope.dynamics import dynamics_table, interval_flows, order_table, summarize
from sftscope.findings import FAILS, HOLDS, UNMEASURABLE, early_late_quality, final_types, findings, utilities
from sftscope.stopping import StageRule, stage_boundary

STEPS = [0, 1, 2, 4, 8, 16, 32]
RULES = [StageRule("cumulative", 0.9), StageRule("crossover")]


def flows(removed, emerged):
    frame = pd.DataFrame({"step": STEPS[1:], "step_from": STEPS[:-1], "removed": removed,
                          "emerged_distinct": emerged})
    frame["emerged_distinct_strength"] = frame["emerged_distinct"] * 0.5
    frame["emerged"] = frame["emerged_distinct"]
    return frame


def summary_table(pre, rem, emg):
    """Per-type means at the last step: {column: value} for preserved, removed and emerged."""
    rows = [{"split": "test", "step": 32, "type": name, **values}
            for name, values in (("preserved", pre), ("removed", rem), ("emerged", emg))]
    return pd.DataFrame(rows)


GOOD_TYPES = summary_table(
    pre={"count": 2, "mean_order": 1.2, "r_gen": 0.6, "rho": 0.9},
    rem={"count": 5, "mean_order": 2.8, "r_gen": 0.1, "rho": 0.2},
    emg={"count": 20, "mean_order": 2.9, "r_gen": 0.2, "rho": 0.3},
)
BAD_TYPES = summary_table(
    pre={"count": 30, "mean_order": 3.0, "r_gen": 0.1, "rho": 0.1},
    rem={"count": 5, "mean_order": 1.0, "r_gen": 0.5, "rho": 0.9},
    emg={"count": 3, "mean_order": 1.1, "r_gen": 0.4, "rho": 0.8},
)
GOOD_EMERGED = {"early_emerged": {"r_gen": 0.4, "rho": 0.8}, "late_emerged": {"r_gen": 0.1, "rho": 0.3}}
BAD_EMERGED = {"early_emerged": {"r_gen": 0.1, "rho": 0.3}, "late_emerged": {"r_gen": 0.4, "rho": 0.8}}
GOOD_UTILITY = {"preserved": 0.5, "removed": 3.0, "early_emerged": 0.6, "late_emerged": 2.0}
BAD_UTILITY = {"preserved": 4.0, "removed": 3.0, "early_emerged": 0.6, "late_emerged": 2.0}
# removals at the start, emergence later: a short denoising stage under both rules
GOOD_FLOWS = flows(removed=[6, 5, 4, 0, 0, 1], emerged=[0, 1, 2, 8, 10, 12])
# removals spread over training with emergence inside the first stage: under cumulative, a long stage 1
# (16 of 32 steps) holding most emergence
BAD_CUMULATIVE = flows(removed=[1, 1, 1, 2, 8, 1], emerged=[0, 0, 0, 20, 1, 1])
# under crossover: removal outpaces emergence until step 8 while both are large (finding 1 fails) ...
BAD_CROSSOVER_1 = flows(removed=[10, 10, 20, 40, 1, 1], emerged=[9, 9, 19, 39, 5, 0])
# ... and emergence outpaces removal only at the end: a long stage 1 (finding 3 fails)
BAD_CROSSOVER_3 = flows(removed=[1, 1, 1, 1, 1, 1], emerged=[0, 0, 0, 0, 0, 30])
BAD_FLOWS = {"cumulative": (BAD_CUMULATIVE, BAD_CUMULATIVE), "crossover": (BAD_CROSSOVER_1, BAD_CROSSOVER_3)}


def verdicts(flow, types, emerged, utility, rule, has_baseline=True):
    boundary = stage_boundary(flow, rule)
    table = findings(types, flow, boundary, 32, emerged, utility=utility, has_baseline=has_baseline, rule=rule.kind)
    return dict(zip(table["finding"].str[0], table["verdict"])), table


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.kind)
def test_every_finding_holds_on_a_paper_like_run(rule):
    found, _ = verdicts(GOOD_FLOWS, GOOD_TYPES, GOOD_EMERGED, GOOD_UTILITY, rule)
    assert found == dict.fromkeys("12345", HOLDS)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.kind)
def test_every_finding_fails_on_a_run_that_contradicts_it(rule):
    for index, flow in enumerate(BAD_FLOWS[rule.kind]):
        found, table = verdicts(flow, BAD_TYPES, BAD_EMERGED, BAD_UTILITY, rule)
        expected = {"1": FAILS if index == 0 else found["1"], "3": FAILS if index == 1 else found["3"]}
        assert found == {**dict.fromkeys("245", FAILS), **expected}, table[["verdict", "reason"]].to_string()


def test_finding_3_is_not_true_by_construction_of_the_cumulative_rule():
    # the case: 10 interactions removed one per step over steps 0-10
    steps = list(range(11))
    flow = pd.DataFrame({"step": steps[1:], "step_from": steps[:-1], "removed": [1] * 10,
                         "emerged_distinct": [0] * 10, "emerged_distinct_strength": [0.0] * 10})
    boundary = stage_boundary(flow, StageRule("cumulative", 0.9))
    assert boundary == 9  # 9 of 10 removals by step 9: stage 1 holds 90% of them by construction
    table = findings(GOOD_TYPES, flow, boundary, 10, GOOD_EMERGED, utility=GOOD_UTILITY)
    row = table.set_index(table["finding"].str[0]).loc["3"]
    assert row["verdict"] == FAILS and "at most 25% of training fails" in row["reason"]


def test_no_second_stage_or_no_removal_is_not_measurable():
    never = flows(removed=[3, 3, 3, 3, 3, 3], emerged=[0] * 6)  # emergence never outpaces removal
    boundary = stage_boundary(never, StageRule("crossover"))
    assert boundary == 32
    table = findings(GOOD_TYPES, never, boundary, 32, GOOD_EMERGED, utility=GOOD_UTILITY, rule="crossover")
    assert table["verdict"][0] == UNMEASURABLE and "does not end before the last checkpoint" in table["reason"][0]
    # finding 3 is measured there, and fails: a first stage that covers all of training is not short
    assert table["verdict"][2] == FAILS and "stage 1 at most 25% of training fails" in table["reason"][2]
    nothing = flows(removed=[0] * 6, emerged=[0, 1, 2, 3, 4, 5])  # the old boundary 0 made finding 1 hold trivially
    table = findings(GOOD_TYPES, nothing, stage_boundary(nothing), 32, GOOD_EMERGED, utility=GOOD_UTILITY)
    assert table["verdict"][0] == UNMEASURABLE and "no interaction was removed" in table["reason"][0]


def test_every_removal_at_the_last_checkpoint_makes_finding_3_fail():
    late = flows(removed=[0, 0, 0, 0, 0, 7], emerged=[1, 1, 1, 1, 1, 1])
    boundary = stage_boundary(late)  # cumulative: 90% of the removals first reached at the last checkpoint
    assert boundary == 32
    table = findings(GOOD_TYPES, late, boundary, 32, GOOD_EMERGED, utility=GOOD_UTILITY)
    assert table["verdict"][2] == FAILS and "100%" in table["measured"][2]


def test_findings_average_over_samples_not_over_split_means():
    """Two train samples and one validation sample: the mean over the three, not the mean of the two split means."""
    spec = {("t1", 0): {("AND", 1): 1.0, ("AND", 3): 0.5}, ("t1", 4): {("AND", 1): 1.0, ("AND", 3): 0.5},
            ("t2", 0): {("AND", 1): 1.0, ("AND", 3): 0.5}, ("t2", 4): {("AND", 1): 1.0, ("AND", 3): 0.5}}
    train = effects_frame(spec, split="train")
    valid = effects_frame({("v", 0): {("AND", 1): 1.0}, ("v", 4): {("AND", 1): 1.0}}, split="validation")
    per_sample = dynamics_table(pd.concat([train, valid], ignore_index=True))
    pooled = summarize(per_sample, by_split=False).set_index(["step", "type"])
    by_split = summarize(per_sample).groupby(["step", "type"])["count"].mean()
    assert pooled.loc[(4, "preserved"), "count"] == pytest.approx(5 / 3)  # (2 + 2 + 1) / 3 samples
    assert by_split.loc[(4, "preserved")] == pytest.approx(1.5)  # (2 + 1) / 2: what the findings used to read


def test_without_a_baseline_r_gen_parts_are_not_measurable_never_failing():
    types = GOOD_TYPES.assign(r_gen=float("nan"))
    emerged = {k: {**v, "r_gen": float("nan")} for k, v in GOOD_EMERGED.items()}
    found, table = verdicts(GOOD_FLOWS, types, emerged, GOOD_UTILITY, RULES[0], has_baseline=False)
    assert found == {"1": HOLDS, "2": UNMEASURABLE, "3": HOLDS, "4": UNMEASURABLE, "5": UNMEASURABLE}
    assert all("no baseline model: r_gen unavailable" in table["reason"][i] for i in (1, 3, 4))
    # the case: order 2.33 > 1.33 and rho 0.58 < 0.74 hold; r_gen is missing -> not measurable
    types = summary_table(pre={"count": 1, "mean_order": 1.33, "r_gen": float("nan"), "rho": 0.74},
                          rem={"count": 3, "mean_order": 2.33, "r_gen": float("nan"), "rho": 0.58},
                          emg={"count": 5, "mean_order": 2.0, "r_gen": float("nan"), "rho": 0.5})
    table = findings(types, GOOD_FLOWS, 4, 32, emerged, utility=GOOD_UTILITY, has_baseline=False)
    assert table["verdict"][3] == UNMEASURABLE and "measured and holding: order removed > preserved" in table["reason"][3]
    # a measurable part that fails still fails
    bad = findings(BAD_TYPES.assign(r_gen=float("nan")), GOOD_FLOWS, 4, 32, emerged, utility=GOOD_UTILITY,
                   has_baseline=False)
    assert bad["verdict"][3] == FAILS


def test_finding_5_includes_the_prediction_it_carries():
    found, table = verdicts(GOOD_FLOWS, GOOD_TYPES, GOOD_EMERGED, BAD_UTILITY, RULES[0])
    assert found["5"] == FAILS and "cross-entropy preserved < removed fails" in table["reason"][4]


# --------------------------------------------------------------------------- edge cases, answers by hand


def test_a_baseline_that_encodes_nothing_shares_nothing_in_both_tables():
    target = effects_frame({("s", 0): {("AND", 1): 1.0}, ("s", 4): {("AND", 1): 1.0, ("AND", 2): 0.8},
                            ("s", 8): {("AND", 1): 1.0, ("AND", 2): 0.9, ("AND", 12): 0.4}})
    base = effects_frame({("s", 9): {}}, model="baseline")  # bias only: encodes nothing
    effects = pd.concat([target, base])
    per_sample = dynamics_table(effects, baseline_model="baseline")
    assert per_sample.loc[per_sample["step"] == 8, "r_gen"].dropna().tolist() == [0.0, 0.0]  # preserved, emerged
    quality = early_late_quality(effects, final_types(effects, boundary=4))
    assert quality["early_emerged"]["r_gen"] == 0.0 and quality["late_emerged"]["r_gen"] == 0.0


def test_one_baseline_step_for_all_samples():
    target = effects_frame({(s, t): {("AND", 1): 1.0, ("AND", 2): 0.5} for s in ("a", "b") for t in (0, 4)})
    # sample b encodes AND 2 only at the baseline's step 5, nothing at its last step 9
    base = effects_frame({("a", 5): {("AND", 2): 0.3}, ("a", 9): {("AND", 1): 0.3, ("AND", 2): 0.3},
                          ("b", 5): {("AND", 1): 0.3, ("AND", 2): 0.3}, ("b", 9): {}}, model="baseline")
    per_sample = dynamics_table(pd.concat([target, base]), baseline_model="baseline").set_index(["sample", "step", "type"])
    assert per_sample.loc[("a", 4, "preserved"), "r_gen"] == 1.0
    assert per_sample.loc[("b", 4, "preserved"), "r_gen"] == 0.0  # step 9 for b too, not b's "latest salient" 5
    at5 = dynamics_table(pd.concat([target, base]), baseline_model="baseline", baseline_step=5)
    assert at5.set_index(["sample", "step", "type"]).loc[("a", 4, "preserved"), "r_gen"] == 0.5
    with pytest.raises(Exception, match="no checkpoint 7 \\(it has 5, 9\\)"):
        dynamics_table(pd.concat([target, base]), baseline_model="baseline", baseline_step=7)


def test_a_sample_that_never_encodes_anything_stays_in_every_table():
    spec = {("a", 0): {("AND", 1): 1.0}, ("a", 4): {("AND", 1): 1.0},
            ("quiet", 0): {}, ("quiet", 4): {}}
    effects = effects_frame(spec, split="validation", bias={"a": 0.3, "quiet": 2.0})
    per_sample = dynamics_table(effects)
    quiet = per_sample[per_sample["sample"] == "quiet"]
    assert len(quiet) == 6 and (quiet["count"] == 0).all()  # 2 steps x 3 types
    assert summarize(per_sample).set_index(["step", "type"]).loc[(4, "preserved"), "count"] == 0.5
    types = final_types(effects, boundary=0)
    assert ("validation", "quiet") in types
    expected = (math.log1p(math.exp(-1.3)) + math.log1p(math.exp(-2.0))) / 2  # a: 0.3 + 1.0; quiet: bias alone
    assert utilities(effects, types)["preserved"] == pytest.approx(expected)


def test_emergence_is_counted_as_churn_and_as_distinct_interactions():
    steps = [0, 2, 3, 4, 5, 6]
    present = {2, 4, 6}  # AND 6 appears, leaves, comes back, leaves, comes back
    spec = {("s", t): {("AND", 1): 1.0, **({("AND", 6): 0.5} if t in present else {})} for t in steps}
    frame = interval_flows(effects_frame(spec))
    assert frame["emerged"].sum() == 3 and frame["emerged_distinct"].sum() == 1
    assert frame.set_index("step")["emerged_distinct"].to_dict() == {2: 1, 3: 0, 4: 0, 5: 0, 6: 0}


def test_initial_salience_with_no_pre_sft_interaction_encodes_nothing():
    from sftscope.dynamics import encoded

    spec = {("s", 0): {("AND", 1): 0.0}, ("s", 4): {("AND", 1): 1e-9, ("AND", 2): 0.7}}
    assert encoded(effects_frame(spec), mode="initial").empty  # as decompose.salience_threshold: no reference, nothing
    assert len(encoded(effects_frame(spec), mode="relative")) == 1  # AND 2 (AND 1 is under 5% of 0.7)


def test_order_distributions_are_averaged_over_all_samples():
    spec = {("a", 0): {("AND", 1): 1.0}, ("b", 0): {("AND", 1): 2.0}, ("c", 0): {}}
    table = order_table(effects_frame(spec)).set_index(["step", "type", "order"])
    assert table.loc[(0, "preserved", 1), "strength_pos"] == pytest.approx(1.0)  # (1 + 2 + 0) / 3
    assert table.loc[(0, "preserved", 1), "strength_pos_total"] == 3.0
