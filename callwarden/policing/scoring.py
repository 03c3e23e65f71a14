"""The risk score: a sum of explicit, weighted ramps. Pure: figures and config in, score out.

Each figure earns ``weight x level`` points, where the level rises linearly from 0 at the
figure's ``start`` to 1 at its ``full`` value (and stays 1 beyond): for answer_rate ``full`` is
below ``start``, so the level rises as the answer rate falls. A figure whose sample is below its
``min_sample`` earns nothing and says so. The score is the sum of the points (each rounded to
two decimals, so the printed contributions add up exactly to the printed score); the level is
``suspend`` at or above ``suspend_score``, ``warn`` at or above ``warn_score``, else ``ok``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from callwarden.config.model import FeatureSpec, PolicingConfig
from callwarden.policing.features import BY_NAME
from callwarden.policing.figures import TenantFigures

Level = Literal["ok", "warn", "suspend"]


def ramp(value: float, start: float, full: float) -> float:
    """0 at ``start``, 1 at ``full``, linear between, clamped to 0..1 (either direction)."""
    level = (value - start) / (full - start)
    return min(1.0, max(0.0, level))


@dataclass(frozen=True, slots=True)
class Contribution:
    """One figure's part in a score, with everything needed to recompute it by hand."""

    feature: str
    label: str
    value: float | None
    sample: int
    min_sample: int
    start: float
    full: float
    weight: float
    level: float
    points: float
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["value"] = None if self.value is None else round(self.value, 4)
        d["level"] = round(self.level, 4)
        return d

    def brief(self) -> str:
        shown = "-" if self.value is None else f"{self.value:.3g}"
        return f"{self.feature} {shown} (+{self.points:g})"


def contribution(name: str, value: float | None, sample: int, spec: FeatureSpec) -> Contribution:
    base = {"feature": name, "label": BY_NAME[name].label, "value": value, "sample": sample,
            "min_sample": spec.min_sample, "start": spec.start, "full": spec.full,
            "weight": spec.weight}
    if value is None or sample < spec.min_sample:
        note = (f"not counted: sample {sample} below min_sample {spec.min_sample}"
                if value is not None or spec.min_sample > 0 else "not counted: no sample")
        return Contribution(**base, level=0.0, points=0.0, note=note)
    level = ramp(value, spec.start, spec.full)
    return Contribution(**base, level=level, points=round(spec.weight * level, 2))


@dataclass(frozen=True, slots=True)
class Risk:
    """A tenant's score with its inputs: the figures, the counts and the thresholds."""

    figures: TenantFigures
    score: float
    level: Level
    warn_score: float
    suspend_score: float
    contributions: tuple[Contribution, ...]

    @property
    def tenant_id(self) -> str:
        return self.figures.tenant_id

    def top(self, n: int = 3) -> list[Contribution]:
        scoring = [c for c in self.contributions if c.points > 0]
        return sorted(scoring, key=lambda c: -c.points)[:n]

    def summary(self) -> str:
        parts = ", ".join(c.brief() for c in self.top(5)) or "no figure scores"
        return (f"risk score {self.score:g} (warn at {self.warn_score:g}, suspend at "
                f"{self.suspend_score:g}): {parts}")

    def as_dict(self) -> dict[str, Any]:
        f = self.figures
        return {
            "tenant": f.tenant_id,
            "status": f.status,
            "score": self.score,
            "level": self.level,
            "thresholds": {"warn": self.warn_score, "suspend": self.suspend_score},
            "windows": {"traffic": f.traffic_window.as_dict(), "edge": f.edge_window.as_dict(),
                        "complaints": f.complaints_window.as_dict()},
            "counts": f.counts(),
            "contributions": [c.as_dict() for c in self.contributions],
        }


def level_for(score: float, cfg: PolicingConfig) -> Level:
    if score >= cfg.suspend_score:
        return "suspend"
    if score >= cfg.warn_score:
        return "warn"
    return "ok"


def score(figures: TenantFigures, cfg: PolicingConfig) -> Risk:
    values = figures.values()
    parts = tuple(contribution(name, *values[name], spec) for name, spec in cfg.features.items())
    total = round(sum(c.points for c in parts), 2)
    return Risk(figures, total, level_for(total, cfg), cfg.warn_score, cfg.suspend_score, parts)
