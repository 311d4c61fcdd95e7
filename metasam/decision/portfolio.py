"""What ships inside the package: the portfolio a quick study names in advance, with what the
benchmark tasks taught about it (``metasam/decision/data/portfolio.yaml``, read with
:mod:`importlib.resources`; its comments say where each figure comes from).

    >>> portfolio = shipped_portfolio()
    >>> [p.label.method for p in portfolio.points]
    ['sam (ρ 0→0.2)', 'ssam', 'sam', 'asam']
    >>> portfolio.gains[1], portfolio.tau     # accuracy units: -0.12 and 0.3 points
    (-0.0012, 0.003)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml

from metasam.errors import ConfigError, ValidationError
from metasam.tuning.trials import Label, Point, Role

FORMAT = "metasam-portfolio/1"
FILE = "portfolio.yaml"


@dataclass(frozen=True)
class Portfolio:
    """Candidates in the order a tie goes, each one's prior mean difference to the first
    (``gains``, accuracy units) and the spread of such differences across tasks (``tau``)."""

    points: list[Point]
    gains: list[float]
    tau: float
    built_from: tuple[str, ...]


@lru_cache(maxsize=1)
def shipped_portfolio() -> Portfolio:
    """The shipped portfolio (one line naming the file and field if it is not one)."""
    text = resources.files("metasam.decision").joinpath("data", FILE).read_text(encoding="utf-8")
    return parse_portfolio(text, f"metasam/decision/data/{FILE}")


def parse_portfolio(text: str, source: str) -> Portfolio:
    from metasam.tuning.space import SearchSpace

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError("", f"not YAML ({type(err).__name__})", "a portfolio file",
                          source) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ConfigError("format", f"{found!r} is not a portfolio this version reads",
                          FORMAT, source)
    entries = data.get("candidates")
    if not isinstance(entries, list) or not entries:
        raise ConfigError("candidates", "expected a non-empty list", "{point: ..., gain: G}",
                          source)
    points: list[Point] = []
    gains: list[float] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) != {"point", "gain"} or \
                not isinstance(entry["gain"], (int, float)):
            raise ConfigError(f"candidates[{i}]", "expected {point: {preset: ...}, gain: G}",
                              source=source)
        try:
            point = (SearchSpace.from_dict({"points": [entry["point"]]}).points)[0]
        except ValidationError as err:
            raise ConfigError(f"candidates[{i}].point.{err.field}", err.problem, err.allowed,
                              source) from None
        if point.spec.get("vary") is None and point.label.preset is not None and \
                set(entry["point"]) == {"preset"}:   # a preset at its default: its reference
            point = Point(Label(Role.REFERENCE, point.label.preset, preset=point.label.preset),
                          point.spec, point.train)
        points.append(point)
        gains.append(round(float(entry["gain"]) / 100.0, 10))
    tau = data.get("tau")
    if not isinstance(tau, (int, float)) or tau <= 0:
        raise ConfigError("tau", f"expected a positive number of points, got {tau!r}",
                          source=source)
    return Portfolio(points, gains, round(float(tau) / 100.0, 10),
                     tuple(data.get("built_from") or ()))
