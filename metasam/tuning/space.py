"""Search spaces over the (φ, ψ, μ) family, read from YAML and sampled define-by-run by Optuna.

A space file has up to three parts::

    presets: [sgd, sam, frob_sam]        # reference points, official defaults, evaluated first
    points:                              # more fixed points; list values expand as a grid
      - {preset: frob_sam, lam: [0.001, 0.01], rho: [0.005, 0.01]}
    search:                              # the parameterized family (omit for a points-only space)
      members: [universal, sam, asam, ssam, trace_sam, frob_sam, det_sam, rwp, tilted_sam]
      region: 4                 # preset regions: ρ (and λ, τ) within ×/÷ 4 of their defaults
      measure: {kinds: [gaussian, sphere, box, ascent, adaptive_ascent], adaptive: [false, true]}
      phi:
        polynomial: {outputs: [1, 2], degree: [1, 3], coefficients: [0.0, 1.0]}
        # or  mlp: {outputs: [1, 2], width: [2, 4], weights: [-2.0, 2.0],
        #           activation: [tanh, softplus], input_scale: [0.1, 10.0]}
      psi: [identity, sum, variance, {fn: root, p: 2}]   # each used where its input size fits
      rho: [0.01, 0.5]          # log-uniform; a radius: random measures use scale "global"
      lam: [0.1, 2.0]           # log-uniform
      lam_scale: relative       # λ's meaning for universal members (SharpnessSpec.lam_scale)
      guard: 5                  # optional: sharpness part ≤ 5‖g0‖ (SharpnessSpec.guard)
      n: [1, 4]                 # perturbations per step (n + 1 passes); 1 for ascent measures
      lr: [0.01, 0.2]           # optional: the base optimizer's lr (log-uniform)
      weight_decay: [1e-5, 1e-3]  # optional (log-uniform)
      d_clip: 50                # optional guard: |D| clipped before φ (see SharpnessSpec)
      ramp:                     # optional: ρ and λ that move over training (SharpnessSpec.vary)
        rho: {start: [0.0, 1.0], shape: [linear, cosine], optional: true}
        lam: {start: [0.0, 1.0]}

``members`` (default ``[universal]``) lists what a sampled trial may be: ``universal``, the
parameterized family below, or a preset region (:mod:`metasam.tuning.regions`): the preset with
its ρ (and λ) tuned around its default. Every sampled universal member is checked through its
implied measure (:mod:`metasam.family.monotone`) and repaired if it would reward sharpness; the
repair is recorded in the trial's ``repaired`` attribute.

A ``ramp`` makes the sampled ρ (or λ) the value training *ends* with and samples where it
starts, as a fraction of that end (``start``: 0 rises from no term, 1 is constant), and the
ramp's shape; with ``optional: true`` a trial first chooses whether to ramp at all. Points may
give a whole trajectory: ``{preset: sam, vary: {rho: {ramp: [0.0, 0.2]}}}``.

Points carry their whole spec (and training overrides) in the trial's user attributes, so the
same machinery serves presets, grids and warm starts from another study.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metasam import _checks, _config
from metasam.errors import ConfigError, SpecError, ValidationError
from metasam.family import presets
from metasam.family.measures import KINDS
from metasam.family.psi import Psi
from metasam.family.spec import LAM_SCALES
from metasam.family.trajectory import RAMPED, SHAPES
from metasam.tuning import record
from metasam.tuning.member_sampling import Range, RegionBoxes, sample_search
from metasam.tuning.regions import MEMBERS
from metasam.tuning.trials import SEARCH, Label, Point, Role

# every kind but SSAM's, whose Fisher mask the search does not tune (SSAM is a preset region)
SEARCH_KINDS = tuple(k for k in KINDS if k != "sparse_ascent")
TRAIN_KEYS = ("lr", "weight_decay", "momentum")
SPEC_KEYS = ("rho", "lam", "n", "d_clip", "vary")
MEASURE_KEYS = ("scale", "half_width", "adaptive", "eta", "sparsity", "fisher_samples",
                "refresh_epochs")
ACTIVATIONS = ("tanh", "softplus", "sigmoid")


@dataclass
class SearchSpace:
    """A validated search space; :meth:`sample` is Optuna's define-by-run function."""

    name: str
    points: list[Point]
    search: dict[str, Any] | None
    source: str | None = None
    boxes: RegionBoxes | None = None

    # --- reading --------------------------------------------------------------------------

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> SearchSpace:
        data = _config.load_yaml(path)
        return cls.from_dict(data, name=Path(path).stem, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, name: str = "space", source: str | None = None
                  ) -> SearchSpace:
        try:
            if not isinstance(data, dict):
                raise ConfigError("", "expected a mapping with presets, points and/or search")
            _checks.known_keys("", data, ("description", "presets", "points", "search"))
            points = _read_presets(data.get("presets", []))
            for i, entry in enumerate(data.get("points", []) or []):
                try:
                    points.extend(_read_point(entry))
                except ValidationError as err:
                    raise err.within(f"points[{i}]") from None
            labels = [p.label.key for p in points]
            duplicate = next((lb for lb in labels if labels.count(lb) > 1), None)
            if duplicate:
                raise ConfigError("points", f"point {duplicate!r} appears twice")
            search = _read_search(data["search"]) if data.get("search") else None
            if search is None and not points:
                raise ConfigError("", "the space has neither points nor a search section",
                                  "presets, points, search")
        except ValidationError as err:
            err = ConfigError(err.field, err.problem, err.allowed)
            raise (err.with_source(source) if source else err) from None
        return cls(name, points, search, source)

    # --- sampling ---------------------------------------------------------------------------

    def sample(self, trial: Any) -> dict[str, Any]:
        """Optuna define-by-run: point trials return their stored spec; others sample one.

        Returns the constants Ray Tune merges into the trial config: ``spec`` (a spec dict),
        ``train`` (training overrides) and ``label`` (:meth:`Label.to_dict`: Ray's boundary).
        """
        stored = record.stored_point(trial.user_attrs)
        if stored is not None:
            return stored
        if self.search is None:
            raise RuntimeError(f"search space {self.name!r} has no search section: only its "
                               f"{len(self.points)} points can be evaluated")
        spec, train = sample_search(self.search, trial, self.boxes)
        return {"spec": spec.to_dict(), "train": train, "label": SEARCH.to_dict(),
                "member": spec.name or "universal"}


# --- presets and points -----------------------------------------------------------------------

def _read_presets(value: Any) -> list[Point]:
    if value == "all":
        value = list(presets.NAMES)
    if not isinstance(value, list):
        raise ConfigError("presets", f"expected a list of preset names or 'all', got {value!r}",
                          presets.NAMES)
    out = []
    for name in value:
        _checks.choice("presets", name, presets.NAMES)
        out.append(Point(Label(Role.REFERENCE, name, preset=name), presets.get(name).to_dict()))
    return out


def _read_point(entry: Any) -> list[Point]:
    if not isinstance(entry, dict) or "preset" not in entry:
        raise ConfigError("preset", "each point needs a preset to start from", presets.NAMES)
    allowed = ("preset", *SPEC_KEYS, *MEASURE_KEYS, *TRAIN_KEYS, "learn")
    _checks.known_keys("", entry, allowed)
    name = _checks.choice("preset", entry["preset"], presets.NAMES)
    keys = [k for k in entry if k != "preset"]
    grids = [entry[k] if isinstance(entry[k], list) else [entry[k]] for k in keys]
    points = []
    for combo in itertools.product(*grids):
        values = dict(zip(keys, combo, strict=True))
        spec_changes = {k: v for k, v in values.items() if k not in (*TRAIN_KEYS, "learn")}
        train = {k: v for k, v in values.items() if k in TRAIN_KEYS}
        for key, value in train.items():
            _checks.number(key, value, low=0.0)
        if "learn" in values:   # the bias learned within the run, from this member
            from metasam.training.learned import LearnSettings

            train["learn"] = LearnSettings.of(values["learn"]).to_dict()
        try:
            spec = presets.get(name, **spec_changes)
        except SpecError as err:
            raise ConfigError(err.field, err.problem, err.allowed) from None
        method = name + "".join(f" {k}={v}" for k, v in values.items()
                                if k not in ("vary", "learn"))
        if "learn" in values:
            method += f" (learned: {', '.join(train['learn']['params'])})"
        if spec.vary is not None:
            method += f" ({spec.vary.label()})"
        points.append(Point(Label(Role.POINT, method, preset=name), spec.to_dict(), train))
    return points


# --- the search section -----------------------------------------------------------------------

def _range(field_name: str, value: Any, *, log: bool, positive: bool = False,
           integer: bool = False) -> Range:
    if not isinstance(value, list) or len(value) != 2:
        raise ConfigError(field_name, f"expected [low, high], got {value!r}", "[low, high]")
    check = _checks.integer if integer else _checks.number
    low = check(f"{field_name}[0]", value[0])
    high = check(f"{field_name}[1]", value[1])
    if low > high:
        raise ConfigError(field_name, f"low {low} is above high {high}", "[low, high], low ≤ high")
    if (log or positive) and low <= 0:
        raise ConfigError(field_name, f"log-uniform ranges need low > 0, got {low}", "(0, inf)")
    return Range(low, high, log)


def _psi_entries(value: Any) -> list[tuple[str, dict[str, Any], int | None]]:
    if not isinstance(value, list) or not value:
        raise ConfigError("search.psi", "expected a non-empty list of ψ functions",
                          "names or {fn: NAME, ...} mappings")
    out = []
    for i, item in enumerate(value):
        try:
            psi = Psi.from_obj(item)
        except SpecError as err:
            raise ConfigError(f"search.psi[{i}]{err.field[3:]}", err.problem, err.allowed) from None
        obj = psi.to_obj()
        label = obj["fn"] + "".join(f":{k}={v}" for k, v in obj.items() if k != "fn")
        out.append((label, obj, psi.dim))
    return out


def _read_search(data: Any) -> dict[str, Any]:
    """The search section as the dict :func:`sample_search` reads: its fields checked by
    :class:`SearchSection` (as TrainConfig's are), then the fields that go together."""
    section = _config.from_mapping(SearchSection, data, prefix="search")
    common = {"members": section.members, "region": section.region, "guard": section.guard,
              "schedule": section.schedule, "ramp": section.ramp}
    common.update({key: getattr(section, key) for key in ("lr", "weight_decay")
                   if getattr(section, key) is not None})
    universal_only = ("measure", "phi", "psi", "rho", "lam", "n", "d_clip")
    if "universal" not in section.members:
        extra = [k for k in universal_only if k in data]
        if extra:
            raise ConfigError(f"search.{extra[0]}", "only used by the universal member, which "
                              "search.members does not list", "add universal to members")
        return common
    for key in ("measure", "phi", "psi", "rho", "lam"):
        if getattr(section, key) is None:
            raise ConfigError(f"search.{key}", "missing")
    phi, psi = section.phi, section.psi
    for m in phi["outputs"]:
        if not [p for p in psi if p[2] in (None, m)]:
            raise ConfigError("search.psi", f"no ψ in the list takes {m} input(s), but φ may "
                              f"have {m} outputs", "add e.g. 'sum'")
    return {**common, "lam_scale": section.lam_scale, **section.measure, "phi": phi, "psi": psi,
            "rho": section.rho, "lam": section.lam, "n": section.n, "d_clip": section.d_clip}


def _check_schedule(name: str, value: Any) -> dict[str, Any] | None:
    """``schedule: {start: [low, high], every: [1, k], reuse: [false, true]}`` — a search
    dimension over the schedule of the sharpness term (docs/family.md §3.4)."""
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise ConfigError("search.schedule", "expected {start: [low, high], every: [1, k], "
                          "reuse: [false, true]}")
    _checks.known_keys("search.schedule", value, ("start", "every", "reuse"))
    out: dict[str, Any] = {}
    if "start" in value:
        start = _range("search.schedule.start", value["start"], log=False)
        if start.low < 0 or start.high >= 1:
            raise ConfigError("search.schedule.start", f"[{start.low}, {start.high}] leaves "
                              "[0, 1)", "fractions of training in [0, 1)")
        out["start"] = start
    if "every" in value:
        out["every"] = _range("search.schedule.every", value["every"], log=False,
                              positive=True, integer=True)
    reuse = value.get("reuse", [False])
    if not isinstance(reuse, list) or not reuse:
        raise ConfigError("search.schedule.reuse", "expected a list", "[false], [false, true]")
    out["reuse"] = [_checks.boolean("search.schedule.reuse", r) for r in reuse]
    return out


def _check_ramp(name: str, value: Any) -> dict[str, Any] | None:
    """``ramp: {rho: {start: [low, high], shape: [linear, cosine], optional: false}, lam:
    ...}`` — ρ and λ from a sampled fraction of their sampled end value (docs/family.md §3.5)."""
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise ConfigError("search.ramp", "expected {rho: {start: [low, high]}, lam: ...}",
                          "rho, lam")
    _checks.known_keys("search.ramp", value, RAMPED)
    out: dict[str, Any] = {}
    for key, body in value.items():
        where = f"search.ramp.{key}"
        if not isinstance(body, dict):
            raise ConfigError(where, "expected {start: [low, high], shape: [...], optional: "
                              "...}")
        _checks.known_keys(where, body, ("start", "shape", "optional"))
        start = _range(f"{where}.start", body.get("start", [0.0, 1.0]), log=False)
        if start.low < 0 or start.high > 1:
            raise ConfigError(f"{where}.start", f"[{start.low}, {start.high}] leaves [0, 1]",
                              "fractions of the end value in [0, 1]")
        shapes = body.get("shape", ["linear"])
        if not isinstance(shapes, list) or not shapes:
            raise ConfigError(f"{where}.shape", "expected a list", SHAPES)
        for shape in shapes:
            _checks.choice(f"{where}.shape", shape, SHAPES)
        out[key] = {"start": start, "shape": shapes,
                    "optional": _checks.boolean(f"{where}.optional",
                                                body.get("optional", False))}
    return out


def _check_members(name: str, members: Any) -> list[str]:
    if not isinstance(members, list) or not members or len(set(members)) != len(members):
        raise ConfigError(f"search.{name}", f"expected a list of distinct members, got "
                          f"{members!r}", MEMBERS)
    for member in members:
        _checks.choice(f"search.{name}", member, MEMBERS)
    return members


def _check_measure(name: str, measure: Any) -> dict[str, Any] | None:
    if measure is None:
        return None
    if not isinstance(measure, dict):
        raise ConfigError("search.measure", "expected {kinds: [...], adaptive: [...]}")
    _checks.known_keys("search.measure", measure, ("kinds", "adaptive"))
    kinds = measure.get("kinds", list(SEARCH_KINDS))
    if not isinstance(kinds, list) or not kinds:
        raise ConfigError("search.measure.kinds", "expected a non-empty list", SEARCH_KINDS)
    for kind in kinds:
        _checks.choice("search.measure.kinds", kind, SEARCH_KINDS)
    adaptive = measure.get("adaptive", [False])
    if not isinstance(adaptive, list) or not adaptive:
        raise ConfigError("search.measure.adaptive", "expected a list", "[false], [false, true]")
    for a in adaptive:
        _checks.boolean("search.measure.adaptive", a)
    return {"kinds": kinds, "adaptive": adaptive}


def _range_check(*, log: bool, positive: bool = False, integer: bool = False) -> Any:
    def check(name: str, value: Any) -> Range | None:
        if value is None or isinstance(value, Range):
            return value
        return _range(f"search.{name}", value, log=log, positive=positive, integer=integer)
    return check


def _positive(name: str, value: Any) -> float | None:
    if value is None:
        return None
    return _checks.number(f"search.{name}", value, low=0.0, low_open=True)


@dataclass
class SearchSection:
    """The ``search`` section of a search-space file, each field checked by its option."""

    members: list[str] = _config.option(None, _check_members, "what a trial may sample",
                                        factory=lambda: ["universal"])
    region: float = _config.option(4.0, lambda n, v: _checks.number(f"search.{n}", v, low=1.0),
                                   "preset regions reach ×/÷ this factor")
    guard: float | None = _config.option(None, _positive, "bound of the sharpness part")
    lr: Range | None = _config.option(None, _range_check(log=True), "[low, high]")
    weight_decay: Range | None = _config.option(None, _range_check(log=True), "[low, high]")
    measure: dict[str, Any] | None = _config.option(None, _check_measure, "kinds, adaptive")
    phi: dict[str, Any] | None = _config.option(
        None, lambda n, v: None if v is None else _read_phi(v), "{polynomial: ...} or {mlp: ...}")
    psi: list[Any] | None = _config.option(
        None, lambda n, v: None if v is None else _psi_entries(v), "names or {fn: ...}")
    rho: Range | None = _config.option(None, _range_check(log=True), "[low, high]")
    lam: Range | None = _config.option(None, _range_check(log=True), "[low, high]")
    lam_scale: str = _config.option(
        "relative", lambda n, v: _checks.choice(f"search.{n}", v, LAM_SCALES),
        "absolute or relative")
    n: Range = _config.option(None, _range_check(log=False, positive=True, integer=True),
                              "[low, high]", factory=lambda: [1, 1])
    d_clip: float | None = _config.option(None, _positive, "|D| clipped at this value")
    schedule: dict[str, Any] | None = _config.option(None, _check_schedule,
                                                      "start, every, reuse ranges")
    ramp: dict[str, Any] | None = _config.option(None, _check_ramp,
                                                 "rho, lam: {start, shape, optional}")

    def __post_init__(self) -> None:
        _config.validate(self)


def _read_phi(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or len(data) != 1:
        raise ConfigError("search.phi", "expected one of {polynomial: ...} or {mlp: ...}",
                          "polynomial, mlp")
    ((kind, body),) = data.items()
    where = f"search.phi.{kind}"
    if kind not in ("polynomial", "mlp"):
        raise ConfigError("search.phi", f"unknown φ family {kind!r}", "polynomial, mlp")
    if not isinstance(body, dict):
        raise ConfigError(where, "expected a mapping")
    outputs = body.get("outputs", [1])
    if not isinstance(outputs, list) or not outputs or any(o not in (1, 2, 3) for o in outputs):
        raise ConfigError(f"{where}.outputs", f"expected a list of output sizes, got {outputs!r}",
                          "sizes 1, 2, 3")
    if kind == "polynomial":
        _checks.known_keys(where, body, ("outputs", "degree", "coefficients"))
        return {"kind": kind, "outputs": outputs,
                "degree": _range(f"{where}.degree", body.get("degree", [1, 2]), log=False,
                                 positive=True, integer=True),
                "coefficients": _range(f"{where}.coefficients", body.get("coefficients",
                                                                          [-1.0, 1.0]),
                                       log=False)}
    _checks.known_keys(where, body, ("outputs", "width", "weights", "activation",
                                     "input_scale"))
    activation = body.get("activation", ["tanh"])
    if not isinstance(activation, list) or not activation:
        raise ConfigError(f"{where}.activation", "expected a list", ACTIVATIONS)
    for a in activation:
        _checks.choice(f"{where}.activation", a, ACTIVATIONS)
    return {"kind": kind, "outputs": outputs,
            "width": _range(f"{where}.width", body.get("width", [2, 4]), log=False,
                            positive=True, integer=True),
            "weights": _range(f"{where}.weights", body.get("weights", [-2.0, 2.0]), log=False),
            "activation": activation,
            "input_scale": _range(f"{where}.input_scale", body.get("input_scale", [0.1, 10.0]),
                                  log=True)}
