"""The race and its statistics: on synthetic objectives with known means and noise, against
scipy, and the instances it runs on (stratified folds that are disjoint and cover the pool)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from scipy import stats

from metasam.decision.racing import Race, RaceEnd, simulate
from metasam.stats import (
    PairedDifference,
    detectable_difference,
    friedman,
    friedman_drop,
    holm,
    paired_two_sided,
)

# --- the paired statistics match scipy ---------------------------------------------------------


def test_paired_difference_matches_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(0.8, 0.01, 12)
    b = a - 0.004 + rng.normal(0, 0.005, 12)
    d = PairedDifference.of(list(a), list(b))
    diff = a - b
    assert d.mean == pytest.approx(diff.mean(), abs=1e-15)
    assert d.sd == pytest.approx(diff.std(ddof=1), rel=1e-12)
    low, high = stats.t.interval(0.95, len(diff) - 1, loc=diff.mean(), scale=stats.sem(diff))
    assert d.ci95 == pytest.approx((high - low) / 2, rel=1e-10)
    assert d.p_greater == pytest.approx(stats.ttest_rel(a, b, alternative="greater").pvalue,
                                        rel=1e-10)
    assert d.p_improvement == pytest.approx(np.mean(diff > 0))
    # differences all the same (exactly, or to rounding: +1/42 computed two ways) are no
    # evidence of anything: p = 1, never the p ≈ 0 a zero spread would give a t-test
    assert PairedDifference.of([1.0, 2.0], [0.0, 1.0]).p_greater == 1.0
    a42 = [0.5 + 1 / 42, 0.6 + 1 / 42, 0.7 + 1 / 42]
    assert PairedDifference.of(a42, [0.5, 0.6, 0.7]).p_greater == 1.0
    assert paired_two_sided(a42, [0.5, 0.6, 0.7]) == 1.0


def test_the_detectable_difference_is_detected_with_80_percent_power():
    """Ground truth: the exact power of the one-sided paired t-test (noncentral t)."""
    for n, sd in ((4, 0.5), (10, 0.4), (25, 1.0)):
        mde = detectable_difference(sd, n)
        critical = stats.t.ppf(0.95, n - 1)
        power = stats.nct.sf(critical, n - 1, mde / (sd / math.sqrt(n)))
        assert 0.78 <= power <= 0.84, (n, power)  # the usual formula's approximation
    assert math.isnan(detectable_difference(0.5, 1))


def test_friedman_matches_scipy_and_conover_finds_the_planted_worst():
    rng = np.random.default_rng(1)
    table = rng.normal(0, 1, (8, 5))
    table[:, 4] -= 3.0  # a clearly worse candidate
    t, p = friedman(table.tolist())
    ref = stats.friedmanchisquare(*table.T)
    assert t == pytest.approx(ref.statistic, rel=1e-10) and p == pytest.approx(ref.pvalue)
    assert friedman_drop(table.tolist(), 0.05) == [False, False, False, False, True]
    # ties within an instance get the mean rank (Friedman's tie correction)
    tied = [[1.0, 1.0, 0.0], [2.0, 1.0, 1.0], [3.0, 3.0, 1.0]]
    ref = stats.friedmanchisquare(*np.array(tied).T)
    assert friedman(tied)[0] == pytest.approx(ref.statistic, rel=1e-10)


def test_holm_matches_its_definition():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.2, math.nan]) == pytest.approx([0.2, math.nan], nan_ok=True)


# --- the race on synthetic objectives ---------------------------------------------------------

def test_the_race_names_the_winner_3_sd_ahead_in_at_least_95_of_100_races():
    right = sum(simulate([3.0, 0.0, 0.0, 0.0, 0.0, 0.0], 1.0, seed=seed, first=3, instances=30,
                         budget=200).winner() == "c0" for seed in range(100))
    assert right >= 95


def test_the_race_drops_a_planted_worse_candidate_and_keeps_a_planted_better_one():
    kept = dropped = 0
    for seed in range(50):
        race = simulate([1.0, 0.0, 0.0, -4.0], 1.0, seed=seed, first=3, instances=15,
                        budget=100)
        kept += "c0" not in race.dropped
        dropped += "c3" in race.dropped
        # the worse one goes within a few tests of the opening instances (each look spends a
        # small share of alpha)
        assert len(race.scores["c3"]) <= 8
    assert kept >= 48 and dropped == 50


def test_the_race_stops_early_when_the_gap_is_large():
    race = simulate([10.0, 0.0, 0.0, 0.0, 0.0], 1.0, seed=3, first=3, instances=30, budget=200)
    assert race.end() is RaceEnd.ONE_LEFT and race.winner() == "c0"
    # Friedman's omnibus test needs a few instances when one candidate stands out among equal
    # ones (the others' ranks are noise), and each look spends only its share of alpha:
    # decided by the tenth instance
    assert race.runs <= 10 * 5
    close = simulate([0.05, 0.0, 0.0, 0.0, 0.0], 1.0, seed=3, first=3, instances=30,
                     budget=200)
    assert close.runs > 3 * race.runs  # a small gap takes far more runs


def test_the_race_respects_its_budget_and_minimizes_too():
    for seed in range(10):
        race = simulate([0.0, 0.0, 0.0], 1.0, seed=seed, first=3, instances=50, budget=20)
        assert race.runs <= 20
        assert race.end() in (RaceEnd.BUDGET, RaceEnd.ONE_LEFT)
        if race.end() is RaceEnd.BUDGET:  # the next round would not have fitted
            assert race.runs + len(race.alive) > 20
    low = simulate([0.0, 3.0, 3.0], 1.0, seed=0, mode="min", first=3, instances=30,
                   budget=100)
    assert low.winner() == "c0"


def test_a_resumed_race_replays_the_same_decisions():
    """The race is a function of its recorded runs: a fresh Race fed the same runs takes the
    same eliminations, in the same order, as the one that ran them."""
    live = simulate([0.6, 0.3, 0.0, 0.0, -0.5], 1.0, seed=7, first=3, instances=20, budget=90)
    replay = Race(list(live.candidates), first=3, instances=20, budget=90)
    for c, values in live.scores.items():
        for i, v in values.items():
            replay.record(c, i, v)
    assert replay.next_round() == [] and replay.dropped == live.dropped
    assert replay.winner() == live.winner()


def test_a_diverged_run_counts_as_the_worst_value():
    race = Race(["a", "b", "c"], first=2, instances=5, budget=30)
    for i in range(2):
        race.record("a", i, 0.9)
        race.record("b", i, 0.8 + 0.01 * i)
        race.record("c", i, math.nan)  # diverged
    assert race.scores["c"] == {0: -math.inf, 1: -math.inf}
    assert race._two_left("a", "c", 2, 0.01) == ["c"]   # diverged on one side only: it goes
    assert race._two_left("a", "b", 2, 1e-9) == []      # two finite: the t-test decides


def test_the_opening_rounds_come_as_one_batch():
    race = Race(["a", "b", "c"], first=3, instances=10, budget=100)
    assert race.next_round() == [(c, i) for i in range(3) for c in "abc"]
    race = Race(["a", "b", "c"], first=3, instances=10, budget=7)  # only 2 instances fit
    assert race.next_round() == [(c, i) for i in range(2) for c in "abc"]


# --- the instances ------------------------------------------------------------------------------

def test_fold_splits_are_disjoint_stratified_and_cover_the_pool():
    from metasam.data.arrays import ArrayData
    from metasam.data.variants import fold_count, stratified_fold

    rng = random.Random(0)
    y = torch.tensor([rng.randrange(4) for _ in range(203)])
    data = ArrayData(torch.arange(203, dtype=torch.float32).reshape(-1, 1, 1), y, 4, (0.0,), (1.0,))
    k = fold_count(0.2)
    assert k == 5 and fold_count(0.15) == 7 and fold_count(0.1) == 10
    folds = [stratified_fold(data, k, f, seed=3) for f in range(k)]
    seen: list[int] = []
    for train, val in folds:
        ids = val.x.flatten().long().tolist()
        assert len(train) + len(val) == 203
        assert not set(ids) & set(train.x.flatten().long().tolist())
        seen += ids
        for c in range(4):  # each class split as evenly as it can be
            count = int((val.y == c).sum())
            total = int((y == c).sum())
            assert total // k <= count <= -(-total // k)
    assert sorted(seen) == list(range(203))  # disjoint, and together the whole pool
    other = stratified_fold(data, k, 0, seed=4)[1].x.flatten().long().tolist()
    assert other != folds[0][1].x.flatten().long().tolist()  # another repeat, another split


# --- error rates that hold over the whole race, and the two-left rule ---------------------------

def test_frace_drops_an_equal_candidate_at_most_at_its_level_over_all_its_looks():
    """400 null races (9 equal candidates, F-Race, budget 200: up to 20 looks): some candidate
    is dropped in at most 5% of them (2 s.e.). Testing every look at the full α instead of its
    spent share drops one in about 17%, so the test fails if the spending is lost."""
    races = 400
    lost = sum(bool(simulate([0.0] * 9, 1.0, seed=s, first=3, instances=30, budget=200,
                             rule="frace").dropped) for s in range(races))
    assert lost / races <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / races), lost


def test_tukey_range_on_rank_sums_matches_its_definition():
    """Ground truth: the critical difference q_{1-a; k, (n-1)(k-1)}·√((nA − ΣR²)/df) computed
    from scipy's studentized range, against which each rank-sum gap is judged."""
    from metasam.stats import ranks_within

    rng = np.random.default_rng(4)
    table = rng.normal(0, 1, (12, 4))
    table[:, 3] -= 2.0
    ranks = np.array(ranks_within(table.tolist()))
    n, k = table.shape
    sums = ranks.sum(axis=0)
    df = (n - 1) * (k - 1)
    spread = (n * (ranks ** 2).sum() - (sums ** 2).sum()) / df
    critical = stats.studentized_range.ppf(0.95, k, df) * math.sqrt(spread)
    expected = [bool(s - sums.min() > critical) for s in sums]
    assert friedman(table.tolist())[1] < 0.05  # the omnibus gate opens
    assert friedman_drop(table.tolist(), 0.05) == expected
    assert expected[3] and not expected[0]


def test_a_much_worse_anchor_does_not_get_equal_candidates_dropped():
    """Anchors run every instance but are never tested: with SGD 10σ worse and the rest equal,
    equal candidates are dropped about as rarely as with no anchor at all."""
    races = 1000
    lost = sum(bool(simulate([0.0, 0.0, 0.0, 0.0, 0.0, -10.0], 1.0, seed=s, first=3,
                             instances=30, budget=60, anchors=frozenset({"c5"})).dropped)
               for s in range(races))
    # at most the nominal 5% (the union bound keeps it lower), three Monte-Carlo errors above
    assert lost / races <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / races), lost


def test_the_two_left_rule_runs_and_is_two_sided():
    """Two contenders left: the two-sided paired t-test (irace's rule) drops the worse one."""
    race = simulate([0.0, -2.0, 0.0, 0.0], 1.0, seed=1, first=3, instances=30, budget=200,
                    anchors=frozenset({"c2", "c3"}))
    assert race.end() is RaceEnd.ONE_LEFT and "c1" in race.dropped and race.winner() != "c1"
    xa, xb = [1.0, 2.0, 3.0, 2.5], [0.5, 1.0, 2.9, 2.0]
    assert paired_two_sided(xa, xb) == pytest.approx(stats.ttest_rel(xa, xb).pvalue)


# --- successive halving (the default rule) -----------------------------------------------------

def test_the_halving_schedule_halves_down_to_two_within_the_budget():
    from metasam.decision.racing import halving_schedule

    assert halving_schedule(9, 3, 30, 48) == [(3, 9), (4, 5), (6, 3), (11, 2)]
    for k in range(2, 14):
        for budget in (2 * k, 36, 48, 90):
            rounds = halving_schedule(k, 3, 30, budget)
            runs = rounds[0][0] * k + sum(n * (b - a) for (a, _), (b, n) in
                                          zip(rounds, rounds[1:]))
            assert runs <= max(budget, 2 * k), (k, budget, rounds)
            sizes = [n for _, n in rounds]
            assert sizes[0] == k and all(b == math.ceil(a / 2) for a, b in zip(sizes, sizes[1:]))
            assert all(x[0] < y[0] for x, y in zip(rounds, rounds[1:]))   # more instances


def test_a_halving_race_keeps_the_better_half_by_paired_mean_and_resumes_the_same():
    live = simulate([0.6, 0.3, 0.0, 0.0, -0.5, 0.1, 0.2, -0.2, 0.0], 1.0, seed=3,
                    rule="halving", first=3, instances=30, budget=48)
    assert live.runs <= 48 and live.end() in (RaceEnd.ROUNDS, RaceEnd.INSTANCES)
    assert len(live.alive) == 2 and len(live.dropped) == 7
    # at each cut, every dropped candidate's mean over the cut's instances is below every
    # survivor's
    for cut in sorted(set(live.dropped.values())):
        out = [c for c, n in live.dropped.items() if n == cut]
        kept = [c for c in live.candidates if live.dropped.get(c, math.inf) > cut]
        assert max(live.mean(c, cut) for c in out) <= min(live.mean(c, cut) for c in kept)
    # replayed from any prefix of its runs, a fresh race asks for the same next runs and ends
    # with the same decisions
    runs = sorted(((i, c, v) for c, s in live.scores.items() for i, v in s.items()))
    for stop in (10, 27, 31, 40, len(runs)):
        replay = Race(list(live.candidates), rule="halving", first=3, instances=30, budget=48)
        for i, c, v in runs[:stop]:
            replay.record(c, i, v)
        asked = replay.next_round()
        assert all(i in live.scores[c] for c, i in asked), stop
        assert {c: n for c, n in replay.dropped.items()} == {
            c: n for c, n in live.dropped.items() if n <= replay.done_instances()}, stop
    assert replay.winner() == live.winner()


def test_one_diverged_run_does_not_disqualify_a_candidate():
    """A candidate 2 points better than eight others, 3% of all runs diverging: named in at
    least 95% of 300 races (a diverged run counts as its instance's worst value, not −∞)."""
    named = sum(simulate([2.0] + [0.0] * 8, 0.6, seed=s, diverge=0.03, rule="halving",
                         first=3, instances=30, budget=48).winner() == "c0"
                for s in range(300))
    assert named >= 0.95 * 300, named
    race = Race(["a", "b"], first=2, instances=5, budget=30)
    race.record("a", 0, math.nan)
    race.record("b", 0, 0.7)
    race.record("a", 1, 0.9)
    race.record("b", 1, 0.6)
    assert race.value("a", 0) == 0.7      # the instance's worst finite value, not −∞
    assert race.leader(2) == "a"           # 0.8 against 0.65


def test_halving_picks_better_than_today_at_equal_budget_and_favours_no_position():
    """MNIST-S-like means (the benchmark's test accuracies, points), σ = 0.6 per run and per
    instance, 48 runs, 400 races: lower expected regret and a best pick at least as often as
    F-Race; under the null, picks spread over the positions (χ² test of uniformity)."""
    means = [91.938, 92.054, 91.957, 92.676, 92.387, 92.599, 92.243, 92.082, 92.070]
    best = max(means)
    out = {}
    for rule, options in (("halving", {}), ("frace", {"anchors": frozenset({"c2", "c3"})})):
        regret, hits = 0.0, 0
        for s in range(400):
            pick = means[int(simulate(means, 0.6, seed=s, rule=rule, first=3, instances=30,
                                      budget=48, **options).winner()[1:])]
            regret += best - pick
            hits += pick == best
        out[rule] = (regret / 400, hits / 400)
    assert out["halving"][0] <= 0.7 * out["frace"][0], out
    assert out["halving"][1] >= out["frace"][1], out
    picks = [0] * 9
    for s in range(900):
        picks[int(simulate([0.0] * 9, 0.6, seed=s, rule="halving", first=3, instances=30,
                           budget=48).winner()[1:])] += 1
    assert stats.chisquare(picks).pvalue > 0.001, picks
