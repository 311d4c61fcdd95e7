"""The search's parts that decide what it can find: penalty-only spaces (checked through the
implied measure), relative λ, the guard, preset regions, trial-seeded samplers and the
race that replaces a lucky winner. No Ray: fast."""

from __future__ import annotations

import json
import random

import optuna
import pytest
import torch
from _util import Recorder, tiny_mlp
from test_gradient import X, Y, reference_gradient

from metasam import SharpnessSpec, UniversalSAM, presets
from metasam.family.monotone import check_penalty, repair_penalty
from metasam.tuning import record
from metasam.tuning.regions import REGIONS, sample_region
from metasam.tuning.seeded_sampler import make_sampler
from metasam.tuning.space import SearchSpace
from metasam.tuning.trials import SEARCH, Label, Point, Role, Status, TrialOutcome


def rotated_spectrum(eig: torch.Tensor, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eig), len(eig), generator=gen, dtype=torch.float64))
    return q @ torch.diag(eig) @ q.T


def falls_somewhere(spec: SharpnessSpec, seed: int = 123, spectra: int = 10) -> bool:
    """An independent check: random *non-diagonal* PSD Hessians at several scales, one
    eigenvalue raised by half; does S fall by more than its Monte Carlo error?"""
    gen = torch.Generator().manual_seed(seed)
    for k in range(spectra):
        scale = 10.0 ** (-3 + 5 * k / (spectra - 1))
        eig = scale * (0.2 + torch.rand(3, generator=gen, dtype=torch.float64))
        before = spec.implied_measure(rotated_spectrum(eig, seed + k), samples=20_000, seed=k)
        for i in range(3):
            bumped = eig.clone()
            bumped[i] *= 1.5
            after = spec.implied_measure(rotated_spectrum(bumped, seed + k), samples=20_000,
                                         seed=k)
            rounding = 1e-9 * max(abs(before.value), abs(after.value), 1e-3)
            if before.value - after.value > 4 * (before.stderr + after.stderr) + rounding:
                return True
    return False


REWARDING = {
    "negative slope": SharpnessSpec(phi={"fn": "polynomial", "coefficients": [0.0, -1.0]}),
    "dip near zero, ascent": SharpnessSpec(
        phi={"fn": "polynomial", "coefficients": [0.0, -0.7, 0.9]}, measure="ascent"),
    "decreasing ψ": SharpnessSpec(psi="inverse_square", measure="sphere", n=2),
    "variance of unrelated blocks": SharpnessSpec(
        phi=[{"fn": "polynomial", "coefficients": [0, 1, 0.3]},
             {"fn": "polynomial", "coefficients": [0, 0.2, 0.5]}], psi="variance", n=2),
}


@pytest.mark.parametrize("name", sorted(REWARDING))
def test_sharpness_rewarding_member_is_rejected_and_repaired(name: str) -> None:
    spec = REWARDING[name]
    assert falls_somewhere(spec), "the case must really reward sharpness somewhere"
    assert not check_penalty(spec).ok
    repaired, note = repair_penalty(spec)
    assert note is not None and repaired != spec
    assert check_penalty(repaired).ok and not falls_somewhere(repaired)
    assert (repaired.measure, repaired.rho, repaired.lam) == (spec.measure, spec.rho, spec.lam)


def test_presets_and_penalties_pass_unchanged() -> None:
    for name in presets.NAMES:
        assert check_penalty(presets.get(name)).ok, name
    spec = SharpnessSpec(phi={"fn": "polynomial", "coefficients": [0, 0.3, 0.2, 0.1]},
                         measure="sphere", n=2)
    assert repair_penalty(spec) == (spec, None)


def test_sampled_universal_members_never_reward_sharpness() -> None:
    # coefficients allowed negative: the sampler must repair what would reward sharpness
    space = SearchSpace.from_dict({"search": {
        "measure": {"kinds": ["gaussian", "sphere", "ascent"]},
        "phi": {"polynomial": {"outputs": [1, 2], "degree": [1, 3],
                               "coefficients": [-1.0, 1.0]}},
        "psi": ["identity", "sum", "variance"], "rho": [0.01, 0.5], "lam": [0.1, 2.0],
        "n": [1, 3]}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    repaired = 0
    for _ in range(30):
        trial = study.ask()
        spec = SharpnessSpec.from_dict(space.sample(trial)["spec"])
        assert spec.lam_scale == "relative" and spec.name == "universal"
        assert not falls_somewhere(spec, spectra=6), spec.describe()
        repaired += "repaired" in trial.user_attrs
        study.tell(trial, 0.0)
    assert repaired >= 5  # about half of such draws reward sharpness somewhere


def test_preset_regions_hold_the_defaults_and_vary_only_their_fields() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for name, region in REGIONS.items():
        default = presets.get(name)
        ranges = region.ranges(4.0)
        for key, (low, high) in ranges.items():
            value = default.phi.to_obj()[0]["scale"] if key == "tau" else getattr(default, key)
            assert low < value <= high or (key == "lam" and value == high)
        for _ in range(5):
            spec = sample_region(name, 4.0, 5.0, study.ask())
            assert spec.name == name and spec.guard == 5.0
            assert (spec.measure, spec.n, spec.psi) == (default.measure, default.n, default.psi)
            assert ranges["rho"][0] <= spec.rho <= ranges["rho"][1]
            if "lam" not in ranges:
                assert spec.lam == default.lam
    assert REGIONS["rwp"].ranges(4.0)["lam"][1] == 1.0  # a mixing weight


def test_relative_lambda_normalizes_the_exact_gradients_weights() -> None:
    for fields in (dict(phi={"fn": "polynomial", "coefficients": [0.0, 1.0, 2.0]}, psi="log",
                        measure="sphere", n=3),
                   dict(phi=["identity", "square"], psi="variance", measure="gaussian", n=3),
                   dict(phi={"fn": "exp", "scale": 0.5}, psi="log", measure="gaussian", n=2)):
        spec = SharpnessSpec(**fields, rho=0.05, lam=0.7, lam_scale="relative")
        model = tiny_mlp()
        params = list(model.parameters())
        recorder = Recorder(params, lambda model=model: ((model(X) - Y) ** 2).mean())
        UniversalSAM(params, torch.optim.SGD, spec, lr=0.0, seed=3).step(recorder)
        perturbations = recorder.perturbations()
        # independent reference: autograd of the absolute objective at λ = n gives
        # g0 + Σ w_i (g_i − g0); the weights w_i = n·∂ψ(mean φ(D))/∂D_i by autograd
        absolute = spec.replace(lam=float(spec.n), lam_scale="absolute")
        full = reference_gradient(model, absolute, perturbations)
        g0 = reference_gradient(model, absolute.replace(lam=0.0), perturbations)
        with torch.no_grad():
            l0 = ((model(X) - Y) ** 2).mean()
            losses = []
            for e in perturbations:
                for p, ei in zip(params, e):
                    p.add_(ei)
                losses.append(((model(X) - Y) ** 2).mean())
                for p, ei in zip(params, e):
                    p.sub_(ei)
        d = ((torch.stack(losses) - l0) / spec.rho**2).requires_grad_(True)
        (grad_d,) = torch.autograd.grad(spec.psi(spec.phi(d).mean(0), spec.n), d)
        total = float((grad_d * spec.n).abs().sum())
        for p, f, g in zip(params, full, g0):
            torch.testing.assert_close(p.grad, g + spec.lam / total * (f - g), rtol=1e-8,
                                       atol=1e-12)


def test_relative_equals_absolute_for_identity_phi_and_psi() -> None:
    grads = []
    for scale in ("absolute", "relative"):
        model = tiny_mlp()
        recorder = Recorder(list(model.parameters()), lambda m=model: ((m(X) - Y) ** 2).mean())
        spec = SharpnessSpec(measure="gaussian", n=2, rho=0.05, lam=0.6, lam_scale=scale)
        UniversalSAM(model.parameters(), torch.optim.SGD, spec, lr=0.0, seed=4).step(recorder)
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0.0)


def _step(spec: SharpnessSpec) -> tuple[list[torch.Tensor], UniversalSAM, list[torch.Tensor]]:
    model = tiny_mlp()
    params = list(model.parameters())
    recorder = Recorder(params, lambda: ((model(X) - Y) ** 2).mean())
    opt = UniversalSAM(params, torch.optim.SGD, spec, lr=0.0, seed=7)
    opt.step(recorder)
    g0 = reference_gradient(model, spec.replace(lam=0.0), recorder.perturbations())
    return [p.grad.clone() for p in params], opt, g0


def test_guard_bounds_the_sharpness_part_and_is_exactly_inactive_within_bounds() -> None:
    base = presets.det_sam(lam=3.0, n=2)
    free, _, g0 = _step(base)
    c = [f - g for f, g in zip(free, g0)]
    norm = lambda ts: float(torch.sqrt(sum((t ** 2).sum() for t in ts)))  # noqa: E731
    share = norm(c) / norm(g0)
    assert share > 0.01
    bound = share / 4
    guarded, opt, _ = _step(base.replace(guard=bound))
    assert opt.last_step.guard_factor == pytest.approx(0.25, rel=1e-9)
    assert opt.last_step.sharpness_share == pytest.approx(share, rel=1e-9)
    c_guarded = [a - g for a, g in zip(guarded, g0)]
    assert norm(c_guarded) == pytest.approx(bound * norm(g0), rel=1e-9)
    for a, b in zip(c_guarded, c):  # same direction, shorter
        torch.testing.assert_close(a, b * 0.25, rtol=1e-9, atol=1e-14)
    # within bounds the step is bit-identical to the unguarded one
    loose, opt, _ = _step(base.replace(guard=2 * share))
    assert opt.last_step.guard_factor == 1.0
    assert all(torch.equal(a, b) for a, b in zip(loose, free))


def test_spec_round_trips_new_fields() -> None:
    spec = presets.tilted_sam(guard=5.0)
    assert SharpnessSpec.from_json(spec.to_json()) == spec
    assert spec.to_dict()["lam_scale"] == "relative"
    with pytest.raises(ValueError, match="lam_scale"):
        SharpnessSpec(lam_scale="percent")
    with pytest.raises(ValueError, match="guard"):
        SharpnessSpec(guard=0.0)


def _sampled_params(seed: int, split_at: int | None = None) -> list[dict]:
    """Ten trials of a deterministic objective; with ``split_at`` a new sampler (a resumed
    process) takes over after that many trials."""
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, sampler=make_sampler("tpe", seed, 3))
    out = []
    for i in range(10):
        if i == split_at:
            study = optuna.load_study(study_name=study.study_name, storage=storage,
                                      sampler=make_sampler("tpe", seed, 3))
        trial = study.ask()
        x = trial.suggest_float("x", -3, 3)
        kind = trial.suggest_categorical("kind", ["a", "b", "c"])
        out.append(dict(trial.params))
        study.tell(trial, (x - 1) ** 2 + {"a": 0, "b": 1, "c": 2}[kind])
    return out


def test_trial_seeded_sampler_reproduces_a_study_across_runs_and_resumes() -> None:
    first = _sampled_params(0)
    assert _sampled_params(0) == first
    assert _sampled_params(0, split_at=5) == first
    assert _sampled_params(1) != first


# --- the race ----------------------------------------------------------------------------------

def _add(study: optuna.Study, value: float, **attrs) -> None:
    attrs = {"full_budget": True, "status": "completed", "epochs": 3, **attrs}
    study.add_trial(optuna.trial.create_trial(value=value, user_attrs=attrs))


def _point(label: str, spec: SharpnessSpec) -> dict:
    return record.point_attrs(Point(Label(Role.REFERENCE, label, preset=label), spec.to_dict()))


def _run_race_offline(config, values) -> None:
    """Play a study's race without Ray: each round's runs are added to the race's study with
    ``values(candidate, instance)``, as Ray Tune would have recorded them."""
    from metasam.decision import stage as decision
    from metasam.tuning.storage import open_storage, open_study

    candidates = decision.race_candidates(config)
    by_id = {c.id: c for c in candidates}
    race_study = open_study(open_storage(config.storage), f"{config.name}.race", config.mode)
    while True:
        race = decision.new_race(config, candidates)
        decision._replay(race, candidates, decision._stored_runs(config))
        batch = race.next_round()
        if not batch:
            return
        for cid, instance in batch:
            owner = by_id[cid]
            point = Point(owner.run_label(instance), owner.spec,
                          {**owner.train, **decision.instance_train(config, instance)})
            _add(race_study, values(owner, instance), **record.point_attrs(point))


def _run_confirmation_offline(config, values, runs: slice = slice(None)) -> None:
    """Play a study's confirmation without Ray, as :func:`_run_race_offline` its race
    (``runs``: which of its points, in order)."""
    from metasam.decision import stage as decision
    from metasam.tuning.storage import open_storage, open_study

    chosen = decision.selection(config)
    assert chosen.plan is not None, "the race has not ended"
    owners = {c.run_label(0, Role.VERDICT).method: c for c in
              (chosen.winner, *chosen.compared.values())}
    verdict_study = open_study(open_storage(config.storage), f"{config.name}.verdict",
                               config.mode)
    for point in decision.confirmation_points(config, chosen)[runs]:
        owner = owners[point.label.method]
        _add(verdict_study, values(owner, 100 + point.label.instance),
             **record.point_attrs(point))


def _lucky_study(tmp_path, **race):
    from _util import write_study

    from metasam.tuning import StudyConfig
    from metasam.tuning.storage import open_storage, open_study

    config = StudyConfig.from_yaml(write_study(tmp_path, race={"top_k": 2, **race}))
    study = open_study(open_storage(config.storage), config.name, config.mode)
    lucky = SharpnessSpec(measure="sphere", n=2, rho=0.2, lam=1.5, lam_scale="relative",
                          name="universal")
    steady = presets.sam(rho=0.1)
    _add(study, 0.80, **_point("sgd", presets.sgd()))                          # trial 0
    _add(study, 0.82, **_point("sam", presets.sam()))                          # trial 1
    _add(study, 0.91, spec=json.dumps(lucky.to_dict()), train="{}")                  # 2
    _add(study, 0.86, spec=json.dumps(steady.to_dict()), train="{}", member="sam")   # 3
    _add(study, 0.95, spec=json.dumps(lucky.to_dict()), train="{}",
         full_budget=False)                                                    # 4: stopped
    return config, steady


def test_the_race_replaces_a_winner_that_was_first_only_by_a_lucky_instance(tmp_path) -> None:
    from metasam.decision import stage as decision
    from metasam.decision.export import best_optimizer

    config, steady = _lucky_study(tmp_path)
    # single-instance view: the lucky trial wins
    assert best_optimizer(config)["trial"] == 2 and best_optimizer(config)["verdict"] is None
    candidates = decision.race_candidates(config)
    assert [(c.trial, c.pick) for c in candidates] == [
        (2, decision.Pick.TOP), (3, decision.Pick.TOP), (0, decision.Pick.PRESET),
        (1, decision.Pick.PRESET)]
    assert candidates[1].name == "sam ρ=0.1" and candidates[3].name == "sam"
    # instances: fresh seeds and the folds of a stratified 7-fold split of the pool's rest
    # (val_fraction 0.1 of the pool, 30% held back for the verdict), then of the next repeat
    assert config.train.val_fraction == 0.1 and config.train.holdout == 0.3
    assert [decision.instance_train(config, i) for i in (0, 6, 7)] == [
        {"seed": 1, "val_seed": 1, "val_fold": 0, "val_folds": 7},
        {"seed": 7, "val_seed": 1, "val_fold": 6, "val_folds": 7},
        {"seed": 8, "val_seed": 2, "val_fold": 0, "val_folds": 7}]
    means = {2: 0.80, 3: 0.86, 0: 0.80, 1: 0.82}
    rng = random.Random(0)
    effects = [rng.gauss(0, 0.01) for _ in range(200)]  # instance difficulty, shared by all

    def values(owner, instance):
        return means[owner.trial] + effects[instance] + rng.gauss(0, 0.004)

    _run_race_offline(config, values)
    verdict = decision.race_verdict(config)
    assert verdict.winner.candidate.trial == 3 and verdict.winner.candidate.name == "sam ρ=0.1"
    # successive halving (the default rule): 4 candidates, then the better 2 to the end
    assert verdict.end is decision.RaceEnd.ROUNDS and verdict.rule == "halving"
    assert not verdict.complete and not verdict.beats_sgd  # no claim before the confirmation
    planned = verdict.plan
    _run_confirmation_offline(config, values, slice(0, 5))   # interrupted: no claim either
    verdict = decision.race_verdict(config)
    assert not verdict.complete and not verdict.beats_sgd and verdict.plan == planned
    _run_confirmation_offline(config, values, slice(5, None))  # resumed
    verdict = decision.race_verdict(config)
    plan = verdict.plan
    assert plan == planned  # sized once, from the race alone
    assert verdict.complete and plan.instances >= 4
    assert plan.capped == (plan.predicted > plan.detect)  # the budget (13 rounds of 3) binds
    assert verdict.beats_sgd and verdict.against["sam"].confident
    sgd = verdict.against["sgd"].test
    assert sgd.family == 2  # SGD and SAM: the space has no other preset
    assert sgd.difference.mean == pytest.approx(0.06, abs=0.01)
    assert sgd.difference.p_improvement == 1.0 and sgd.difference.n == plan.instances
    assert sgd.difference.overlap == pytest.approx(
        plan.fold / (decision.data_sizes(config).pool - plan.fold))
    exported = best_optimizer(config)
    assert exported["trial"] == 3 and exported["name"] == "sam ρ=0.1"
    assert exported["spec"] == steady.to_dict()
    assert exported["value"] == pytest.approx(verdict.winner.confirmed_mean())
    figures = exported["verdict"]["against"]["sgd"]
    assert figures["mean"] == pytest.approx(100 * sgd.difference.mean) and figures["confident"]
    assert figures["p_holm"] == pytest.approx(sgd.p_adjusted)
    assert "played no part in choosing the winner" in exported["verdict"]["meaning"]
    assert exported["cost"]["race_runs"] == verdict.runs
    assert exported["cost"]["confirmation_runs"] == 3 * plan.instances
    lines = verdict.lines(config.metric)
    winner_line = next(i for i, line in enumerate(lines) if line.startswith("winner: "))
    assert lines[winner_line].startswith("winner: sam ρ=0.1")
    plan_line = next(line for line in lines if line.startswith("confirmation: "))
    need = plan.fold * plan.instances * (plan.predicted / plan.detect) ** 2
    assert f"about {need:,.0f} held-back validation examples would reach 1.00 points" in plan_line
    sgd_line = next(line for line in lines if line.startswith("verdict against SGD"))
    assert sgd_line.startswith("verdict against SGD (sgd: +6.")
    assert "beats it with confidence" in sgd_line and "Holm-adjusted over 2" in sgd_line
    assert lines[-1].startswith("'with confidence': the chance that any of these 2 verdicts")


def test_a_resumed_race_asks_only_for_what_is_missing(tmp_path) -> None:
    """The race is replayed from its stored runs: interrupted after its opening batch, it asks
    for the next round, not for the opening again."""
    from metasam.decision import stage as decision

    config, _ = _lucky_study(tmp_path, first=3)
    candidates = decision.race_candidates(config)
    race = decision.new_race(config, candidates)
    opening = race.next_round()
    assert len(opening) == 3 * len(candidates)
    race_study_values = {(c, i): 0.8 + 0.01 * k for k, (c, i) in enumerate(opening)}
    from metasam.tuning.storage import open_storage, open_study

    stored = open_study(open_storage(config.storage), f"{config.name}.race", config.mode)
    by_id = {c.id: c for c in candidates}
    for (cid, instance), value in race_study_values.items():
        owner = by_id[cid]
        point = Point(owner.run_label(instance), owner.spec, {})
        _add(stored, value, **record.point_attrs(point))
    again = decision.new_race(config, candidates)
    decision._replay(again, candidates, decision._stored_runs(config))
    asked = again.next_round()   # halving: the better 2 on the next round's instances
    assert asked and min(i for _, i in asked) == 3 and len({c for c, _ in asked}) == 2


def test_the_verdict_names_sgd_when_nothing_beats_it() -> None:
    from metasam.decision.confirmation import Plan
    from metasam.decision.racing import Race
    from metasam.decision.stage import Candidate, Pick, Selection, verdict_of

    cands = [Candidate("universal #5", Pick.TOP, {"name": "universal"}, trial=5),
             Candidate("sgd", Pick.PRESET, presets.sgd().to_dict(), trial=0),
             Candidate("sam", Pick.PRESET, presets.sam().to_dict(), trial=1)]
    by_id = {c.id: c for c in cands}
    plan = Plan(4, 50, 0.04, 0.01, 0.02, 0.01, 0.8, True)
    for mode, values, confirmed in (
            ("max", {"t5": [0.79, 0.80, 0.81], "t0": [0.82, 0.83, 0.82],
                     "t1": [0.80, 0.81, 0.80]},
             {"t0": [0.82, 0.84, 0.83, 0.82], "t1": [0.81, 0.83, 0.82, 0.80]}),
            ("min", {"t5": [0.40, 0.41, 0.42], "t0": [0.50, 0.52, 0.51],
                     "t1": [0.30, 0.31, 0.30]},
             {"t1": [0.30, 0.31, 0.30, 0.32], "t0": [0.50, 0.52, 0.51, 0.50]})):
        race = Race([c.id for c in cands], mode=mode, first=3, instances=3,
                    anchors=frozenset({"t0", "t1"}))
        for cid, vs in values.items():
            for i, v in enumerate(vs):
                race.record(cid, i, v)
        race.next_round()
        winner = by_id[race.winner()]
        compared = {"sam": by_id["t1"]} if winner.id == "t0" else {"sgd": by_id["t0"]}
        verdict = verdict_of(Selection(cands, race, winner, compared, plan),
                             {c: dict(enumerate(v)) for c, v in confirmed.items()}, mode)
        if mode == "max":
            assert verdict.winner.candidate.name == "sgd" and not verdict.beats_sgd
            assert "sgd" not in verdict.against and verdict.complete
            assert "SGD at its default is the winner" in "\n".join(verdict.lines("val_acc"))
        else:  # lower is better: SAM wins, and beats SGD
            assert verdict.winner.candidate.name == "sam" and verdict.beats_sgd


def test_study_race_and_auto_grace_fields(tmp_path) -> None:
    from _util import write_study

    from metasam.errors import ConfigError
    from metasam.tuning import StudyConfig

    path = write_study(tmp_path, epochs=10, race=False,
                       scheduler={"type": "asha", "grace_period": "auto",
                                  "reduction_factor": 3})
    config = StudyConfig.from_yaml(path)
    assert config.race is None
    assert config.scheduler["grace_period"] == 8  # one rung, at three quarters
    path = write_study(tmp_path, race={"top_k": 2, "first": 1})
    with pytest.raises(ConfigError, match="race.first"):
        StudyConfig.from_yaml(path)
    path = write_study(tmp_path, confirm={"top_k": 2, "seeds": 3})  # a stage that is gone
    with pytest.raises(ConfigError, match="confirm: the confirmation stage was replaced by the "
                                          "race"):
        StudyConfig.from_yaml(path)


class _RayTrial:
    """The two attributes of a Ray Tune trial that ASHA reads."""

    def __init__(self, trial_id: str, label: str) -> None:
        self.trial_id = trial_id
        self.config = {"label": (SEARCH if label == "search" else
                                 Label(Role.REFERENCE, label, preset=label)).to_dict()}


def test_asha_judges_searched_trials_only_against_searched_trials() -> None:
    from ray.tune.schedulers import TrialScheduler

    from metasam.tuning.schedulers import ReferencePointsASHA, auto_grace_period

    assert auto_grace_period(12, 3) == 9 and auto_grace_period(10, 2) == 8
    assert auto_grace_period(1, 3) == 1
    # one rung, at epoch 4 (the next, 12, would be past the budget)
    asha = ReferencePointsASHA(time_attr="epoch", metric="val_acc", mode="max", max_t=10,
                               grace_period=4, reduction_factor=3)
    preset, first, second = (_RayTrial("p", "sam"), _RayTrial("s1", "search"),
                             _RayTrial("s2", "search"))
    for trial in (preset, first, second):
        asha.on_trial_add(None, trial)
    for epoch in range(1, 11):  # a strong reference point runs to the end first
        assert asha.on_trial_result(None, preset, {"epoch": epoch, "val_acc": 0.9}) == \
            TrialScheduler.CONTINUE
    asha.on_trial_complete(None, preset, {"epoch": 10, "val_acc": 0.9})
    # the first searched trial at the rung has no searched rival yet: it goes on
    assert asha.on_trial_result(None, first, {"epoch": 4, "val_acc": 0.5}) == \
        TrialScheduler.CONTINUE
    # a worse one is stopped, against the searched trial, not the preset
    assert asha.on_trial_result(None, second, {"epoch": 4, "val_acc": 0.4}) == \
        TrialScheduler.STOP



def test_trial_record_reads_back_what_the_searcher_and_storage_write() -> None:
    import optuna

    from metasam.tuning import record
    from metasam.tuning.record import TrialRecord

    study = optuna.create_study(direction="maximize")
    cases = [  # (result, error) -> (status, full_budget, counts, state)
        ({"status": "completed", "epoch": 3, "val_acc": 0.9, "passes_per_step": 2}, False,
         ("completed", True, True)),
        ({"status": "running", "epoch": 1, "val_acc": 0.5}, False, ("stopped", False, True)),
        ({"status": "diverged", "epoch": 2, "reason": "non-finite loss"}, False,
         ("diverged", False, True)),
        ({}, True, ("failed", False, True)),
    ]
    for result, error, (status, full, counted) in cases:
        trial = study.ask()
        config = {"label": SEARCH.to_dict(), "member": "sam", "spec": {"rho": 0.1},
                  "train": {"lr": 1}}
        outcome = TrialOutcome.of_result(result, 3, error)
        for key, value in {**record.start_attrs(config, False),
                           **record.outcome_attrs(outcome)}.items():
            trial.set_user_attr(key, value)
        study.tell(trial, result.get("val_acc") if status in ("completed", "stopped") else None,
                   state=None if status in ("completed", "stopped")
                   else optuna.trial.TrialState.FAIL)
        rec = TrialRecord.of(study.trials[-1])
        assert (rec.status, rec.full_budget, rec.counts) == (Status(status), full, counted)
        assert rec.label == SEARCH and not rec.is_point and rec.member == "sam"
        assert rec.spec == {"rho": 0.1} and rec.train == {"lr": 1}
    assert TrialRecord.of(study.trials[0]).passes_per_step == 2
    assert TrialRecord.of(study.trials[2]).reason == "non-finite loss"
    assert "see the Ray logs" in TrialRecord.of(study.trials[3]).reason
    enqueued = record.point_attrs(Point(Label(Role.REFERENCE, "sam", preset="sam"),
                                        {"rho": 0.05}))
    study.enqueue_trial({}, user_attrs={**enqueued, record.INTERRUPTED: True})
    rec = TrialRecord.of(study.trials[-1])
    assert rec.label == Label(Role.REFERENCE, "sam", preset="sam") and rec.is_point
    assert rec.interrupted and not rec.counts and rec.name == "sam"


def test_the_schedule_is_a_search_dimension() -> None:
    import optuna

    from metasam import SharpnessSpec
    from metasam.tuning import SearchSpace

    space = SearchSpace.from_dict({"search": {
        "members": ["sam", "frob_sam"],
        "schedule": {"start": [0.0, 0.5], "every": [1, 4], "reuse": [False, True]}}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        config = space.sample(trial)
        spec = SharpnessSpec.from_dict(config["spec"])
        schedule = spec.schedule
        if schedule is None:  # start 0 and every 1 sampled: the term on every step
            seen.add("always")
            continue
        assert 0.0 <= schedule.start <= 0.5 and 1 <= schedule.every <= 4
        assert not schedule.reuse or schedule.every > 1
        seen.add((schedule.every > 1, schedule.reuse))
        study.tell(trial, 0.0)
    assert {(True, True), (True, False), (False, False)} <= seen
    from metasam.errors import ValidationError

    with pytest.raises(ValidationError, match="search.schedule.start"):
        SearchSpace.from_dict({"search": {"members": ["sam"], "schedule": {"start": [0.5, 1.0]}}})


def test_ramps_of_rho_and_lambda_are_search_dimensions() -> None:
    """A sampled ramp ends at the member's sampled value and starts at a sampled fraction of
    it; optional ramps are sometimes absent; a point may carry a whole trajectory."""
    from metasam.errors import ValidationError
    from metasam.family.trajectory import Ramp
    from metasam.tuning.regions import REGIONS

    space = SearchSpace.from_dict({
        "points": [{"preset": "sam", "vary": {"rho": {"ramp": [0.0, 0.2]}}}],
        "search": {"members": ["sam", "frob_sam"],
                   "ramp": {"rho": {"start": [0.0, 0.5], "shape": ["linear", "cosine"],
                                    "optional": True},
                            "lam": {"start": [0.25, 1.0]}}}})
    (point,) = space.points
    assert point.label.method == "sam (ρ 0→0.2)"
    assert SharpnessSpec.from_dict(point.spec).at(0.5).rho == pytest.approx(0.1)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        spec = SharpnessSpec.from_dict(space.sample(trial)["spec"])
        params = trial.params
        low, high = REGIONS[spec.name].ranges(4.0)["rho"]
        assert low <= spec.rho <= high        # the sampled value is where the ramp ends
        assert spec.vary is not None and "lam" in spec.vary.names
        lam = spec.vary["lam"]
        assert isinstance(lam, Ramp) and lam.end == spec.lam
        assert lam.start == pytest.approx(params["ramp_lam_start"] * spec.lam)
        if params["ramp_rho"]:
            rho = spec.vary["rho"]
            assert rho.shape == params["ramp_rho_shape"]
            assert rho.start == pytest.approx(params["ramp_rho_start"] * spec.rho)
            assert rho.start <= 0.5 * rho.end
            seen.add(rho.shape)
        else:
            assert "rho" not in spec.vary.names
            seen.add("fixed")
        study.tell(trial, 0.0)
    assert seen == {"linear", "cosine", "fixed"}
    for bad, field in (({"rho": {"start": [0.0, 1.5]}}, "search.ramp.rho.start"),
                       ({"n": {"start": [0.0, 1.0]}}, "search.ramp"),
                       ({"lam": {"shape": ["step"]}}, "search.ramp.lam.shape")):
        with pytest.raises(ValidationError, match=field.replace(".", r"\.")):
            SearchSpace.from_dict({"search": {"members": ["sam"], "ramp": bad}})
