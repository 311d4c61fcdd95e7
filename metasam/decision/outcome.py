"""What a study's decision concluded, as people and programs read it: the race's standings,
the confirmation's plan, and the verdict's comparisons (the text ``tune``, ``best`` and
``trials`` print, and the ``verdict`` of the export)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from metasam.decision.candidate import Candidate
from metasam.decision.confirmation import Plan, Test
from metasam.decision.racing import RaceEnd

NAMES = {"sgd": "against SGD", "sam": "against SAM at its default",
         "best_preset": "against the best other preset"}


@dataclass(frozen=True)
class Standing:
    """A candidate's runs in the race, by instance, when it dropped out (None: it survived),
    and its confirmation runs (empty unless the verdict compares it)."""

    candidate: Candidate
    values: dict[int, float]
    dropped_after: int | None
    confirmed: dict[int, float]
    diverged: int = 0      # race runs that diverged (in ``values`` at their instance's worst)

    def mean(self, upto: int | None = None) -> float:
        """Its race mean over its first ``upto`` instances (default: all of them)."""
        values = [self.values[i] for i in sorted(self.values)[:upto]]
        return sum(values) / len(values) if values else math.nan

    def confirmed_mean(self) -> float:
        values = list(self.confirmed.values())
        return sum(values) / len(values) if values else math.nan


@dataclass(frozen=True)
class Comparison:
    """The winner against one other candidate on the confirmation instances (in the metric's
    direction: positive means the winner is better); ``test`` is None until the confirmation
    has finished."""

    other: Standing
    test: Test | None

    @property
    def confident(self) -> bool:
        return self.test is not None and self.test.confident

    def to_dict(self, scale: float) -> dict[str, Any]:
        base: dict[str, Any] = {"name": self.other.candidate.name}
        t = self.test
        if t is None:
            return {**base, "confident": False, "complete": False}
        d = t.difference
        return {**base, "complete": True, "mean": d.mean * scale, "ci95": d.ci95 * scale,
                "sd": d.sd * scale, "instances": d.n, "p_improvement": d.p_improvement,
                "p_value": d.p_greater,
                "p_holm": t.p_adjusted, "family": t.family, "overlap": d.overlap,
                "detectable": d.detectable * scale, "confident": self.confident}

    def text(self, scale: float, unit: str, power: float) -> str:
        name = self.other.candidate.name
        t = self.test
        if t is None:
            return f"{name}: the confirmation has not finished"
        d = t.difference
        ci = "" if math.isnan(d.ci95) else f" ± {d.ci95 * scale:.2f}"
        p = "nan" if math.isnan(d.p_greater) else f"{d.p_greater:.3f}"
        ph = "nan" if math.isnan(t.p_adjusted) else f"{t.p_adjusted:.3f}"
        mde = "n/a" if math.isnan(d.detectable) else f"{d.detectable * scale:.2f}{unit}"
        verdict = "beats it with confidence" if self.confident else "not with confidence"
        if t.look is not None:
            why = {"efficacy": "crossed its boundary", "futility": "stopped for futility",
                   "final": "the last look"}[t.look.stopped or "final"]
            return (f"{name}: {d.mean * scale:+.2f}{ci}{unit} (95% CI, {d.n} fresh "
                    f"instances), P(improvement) {d.p_improvement:.2f}, p = {p}; look "
                    f"{t.look.look}: z = {t.look.z:.2f} against {t.look.boundary:.2f} "
                    f"({why}, conditional power {t.look.conditional_power:.2f}): {verdict}")
        return (f"{name}: {d.mean * scale:+.2f}{ci}{unit} (95% CI, {d.n} fresh instances), "
                f"P(improvement) {d.p_improvement:.2f}, p = {p}, Holm-adjusted over "
                f"{t.family}: {ph}: {verdict}; detectable at {power:.0%} power: {mde}")


@dataclass(frozen=True)
class Verdict:
    """The race's winner, the confirmation's plan, and how the winner stands against SGD, SAM
    at its default and the best other preset on the confirmation's fresh instances."""

    winner: Standing
    standings: list[Standing]          # the survivors first (by mean), then by when they left
    against: dict[str, Comparison]     # "sgd", "sam", "best_preset"
    plan: Plan | None                  # None: the race has not ended
    end: RaceEnd
    runs: int                          # the race's runs
    mode: str
    alpha: float
    rule: str = "frace"                # how the race spent its runs (racing.RULES)

    @property
    def complete(self) -> bool:
        """Has the confirmation finished (the verdict's tests are in)?"""
        return bool(self.against) and all(c.test is not None for c in self.against.values())

    @property
    def beats_sgd(self) -> bool:
        return "sgd" in self.against and self.against["sgd"].confident

    @property
    def beats_best_preset(self) -> bool:
        return "best_preset" in self.against and self.against["best_preset"].confident

    @property
    def value(self) -> float:
        """The winner's mean on the confirmation instances (not selected on, so not biased
        upwards), else its race mean."""
        mean = self.winner.confirmed_mean()
        return self.winner.mean() if math.isnan(mean) else mean

    @staticmethod
    def scale_of(metric: str) -> tuple[float, str]:
        return (100.0, " points") if metric.endswith("acc") else (1.0, "")

    def meaning(self) -> str:
        family = len(self.against)
        if self.plan is not None and self.plan.sequential:
            return (f"'with confidence': the chance that any of these {family} verdicts is wrong "
                    f"is at most {self.alpha:.0%} over all the looks (O'Brien–Fleming spending, "
                    f"{self.alpha / max(1, family):.0%} per comparison), on fresh instances — new "
                    "seeds and held-back validation examples — that played no part in choosing "
                    "the winner")
        return (f"'with confidence': the chance that any of these {family} verdicts is wrong is "
                f"at most {self.alpha:.0%} (Holm over the family), on fresh instances — new "
                "seeds and held-back validation examples — that played no part in choosing "
                "the winner")

    def to_dict(self, metric: str = "val_acc") -> dict[str, Any]:
        scale, _ = self.scale_of(metric)
        w = self.winner
        return {"winner": w.candidate.name, "trial": w.candidate.trial,
                "mean": self.value, "race_mean": w.mean(), "instances": len(w.values),
                "values": [w.values[i] for i in sorted(w.values)],
                "confirmed": [w.confirmed[i] for i in sorted(w.confirmed)],
                "race": {"end": self.end.value, "runs": self.runs, "alpha": self.alpha,
                         "rule": self.rule,
                         "standings": [{"name": s.candidate.name, "mean": s.mean(),
                                        "instances": len(s.values),
                                        "dropped_after": s.dropped_after,
                                        "diverged": s.diverged}
                                       for s in self.standings]},
                "confirmation": self.plan.to_dict() if self.plan else None,
                "against": {k: c.to_dict(scale) for k, c in self.against.items()},
                "units": "metric points" if scale == 100.0 else "metric units",
                "meaning": self.meaning(), "complete": self.complete,
                "beats_sgd": self.beats_sgd, "beats_best_preset": self.beats_best_preset}

    def lines(self, metric: str) -> list[str]:
        scale, unit = self.scale_of(metric)
        shown = "%" if scale == 100.0 else ""
        n = len(self.winner.values)
        opening = min(len(st.values) for st in self.standings)
        width = max([40] + [len(st.candidate.name) + 1 for st in self.standings])
        out = [f"race ({metric}{' ' + shown if shown else ''}; selection: an instance = a "
               f"training seed and a validation fold of the pool's rest; "
               f"{len(self.standings)} candidates, {self.runs} runs; ended: {self.end.value}):",
               f"  (first {opening}: the mean over the {opening} instances every candidate "
               "ran, the like-for-like comparison; then over all the instances it ran)",
               f"  {'':<{width}} {'first ' + str(opening):>8}  {'all its instances':<24}"]
        for st in self.standings:
            mark = "  <- winner" if st is self.winner else ""
            if st.dropped_after is None:
                left = f"{len(st.values)} instances"
            elif self.rule == "halving":
                left = f"stopped after {st.dropped_after}: not in the better half"
            else:
                left = f"dropped after {st.dropped_after}: worse by the test"
            if st.diverged:
                left += f"; {st.diverged} diverged, counted as the instance's worst"
            out.append(f"  {st.candidate.name:<{width}} {st.mean(opening) * scale:8.2f}  "
                       f"{st.mean() * scale:6.2f} ({left}){mark}")
        out.append(f"winner: {self.winner.candidate.name}, {metric} "
                   f"{self.winner.mean() * scale:.2f}{shown} over {n} race instances (the "
                   "instances that chose it: biased upwards)")
        if self.winner.candidate.preset == "sgd":
            out.append("SGD at its default is the winner: no tuned member or preset led it")
        plan = self.plan
        if plan is None:
            out.append("confirmation: after the race")
            return out
        if plan.instances < 2:
            if plan.note == "hopeless":
                out.append(f"confirmation: not run — the plan showed it hopeless (the "
                           f"held-back examples can confirm differences of "
                           f"{plan.predicted * scale:.2f}{unit} or more, above the "
                           f"{plan.detect * scale:.2f}{unit} it was to see): the winner is a "
                           "pick, not a claim; more held-back data (race.holdout, a larger "
                           "dataset) and a budget with confirmation runs would make one")
            elif plan.note == "budget":
                out.append("confirmation: none — the budget left no confirmation runs (the "
                           "plan's line says what budget would): the winner is a pick, not a "
                           "claim")
            else:
                out.append("confirmation: none (race.confirm_budget or the held-back share "
                           "allows fewer than 2 instances): no verdict")
            return out
        reach = ("" if math.isnan(plan.predicted) else
                 f", predicted {plan.predicted * scale:.2f}{unit}")
        why = ""
        if plan.capped:
            why = "; capped by race.confirm_budget or the fold size"
            if not math.isnan(plan.predicted) and plan.predicted > 0:
                # the detectable difference falls like 1/√(held-back examples)
                need = plan.fold * plan.instances * (plan.predicted / plan.detect) ** 2
                why += (f" (about {need:,.0f} held-back validation examples would reach "
                        f"{plan.detect * scale:.2f}{unit}; race.holdout sets the share)")
        looks = (f", looked at after {', '.join(map(str, plan.looks))} (O'Brien–Fleming "
                 "spending; stopped when won or hopeless)" if plan.sequential else "")
        out.append(f"confirmation: {plan.instances} fresh instances at most (new seeds; "
                   f"disjoint validation folds of {plan.fold} held-back examples), sized to "
                   f"detect {plan.detect * scale:.2f}{unit} at {plan.power:.0%} power"
                   f"{reach}{why}{looks}")
        if not math.isnan(self.winner.confirmed_mean()):
            out.append(f"winner on the confirmation: {metric} "
                       f"{self.winner.confirmed_mean() * scale:.2f}{shown} over "
                       f"{len(self.winner.confirmed)} fresh instances")
        for key, comparison in self.against.items():
            out.append(f"verdict {NAMES[key]} ({comparison.text(scale, unit, plan.power)})")
        if self.against:
            out.append(self.meaning())
        return out
