"""Risk: a score 0-100 from the incident and the other enrichers' results, with the factors
that make it up (`risk.factors`), and optional severity escalation rules.

score = min(100, sum of the factors), each factor capped:

- severity: the incident's severity (Critical and above 40, Error 30, Warning 20, Notice 10);
- distinct_rules: distinct Falco rules (or steps) beyond the first, 5 each, at most 15;
- critical_fixable: Critical CVEs with a fixed version (Harbor, else Trivy), 10 each, max 20;
- high_fixable: High CVEs with a fixed version, 2 each, at most 6;
- cis_failed: failed CIS checks of the node (kube-bench), 1 each, at most 10;
- exposure: kube-hunter findings on the node, high 10, medium 5, low 2, at most 15;
- criticality: the owner's service criticality, critical 15, high 10, medium 5.

Runs after the other enrichers. An escalation rule raises (never lowers) the incident's
`severity` when the score reaches `min_score` and, if given, the owner's environment and
criticality are among those listed; the change is recorded under `risk.escalation`.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from streams._config_fields import Fields
from streams.core.priority import PRIORITY_NAMES, canonical_priority, priority_rank
from streams.enrich.pipeline import EnricherContext
from streams.errors import ConfigError

__all__ = ["Capped", "EscalationRule", "RiskEnricher", "RiskModel", "score_incident"]

_SEVERITY_POINTS = {
    "Emergency": 40, "Alert": 40, "Critical": 40, "Error": 30,
    "Warning": 20, "Notice": 10, "Informational": 5, "Debug": 0,
}  # fmt: skip
_EXPOSURE_POINTS = {"high": 10, "medium": 5, "low": 2}
_CRITICALITY_POINTS = {"critical": 15, "high": 10, "medium": 5, "low": 0}


@dataclass(frozen=True, slots=True)
class Capped:
    per: float
    max: float

    def points(self, count: int) -> float:
        return min(count * self.per, self.max)


@dataclass(frozen=True, slots=True)
class EscalationRule:
    min_score: float
    severity: str
    environments: tuple[str, ...] = ()
    criticalities: tuple[str, ...] = ()

    def applies(self, score: float, owner: Mapping[str, Any]) -> bool:
        if score < self.min_score:
            return False
        if self.environments and owner.get("environment") not in self.environments:
            return False
        criticality = str(owner.get("criticality", "")).lower()
        return not self.criticalities or criticality in self.criticalities


@dataclass(frozen=True, slots=True)
class RiskModel:
    severity: Mapping[str, float] = field(default_factory=lambda: dict(_SEVERITY_POINTS))
    distinct_rules: Capped = Capped(5, 15)
    critical_fixable: Capped = Capped(10, 20)
    high_fixable: Capped = Capped(2, 6)
    cis_failed: Capped = Capped(1, 10)
    exposure: Mapping[str, float] = field(default_factory=lambda: dict(_EXPOSURE_POINTS))
    exposure_max: float = 15
    criticality: Mapping[str, float] = field(default_factory=lambda: dict(_CRITICALITY_POINTS))
    vulnerabilities_from: tuple[str, ...] = ("harbor", "trivy")
    posture_from: str = "posture"
    ownership_from: str = "ownership"
    escalate: tuple[EscalationRule, ...] = ()


def _factor(name: str, points: float, value: object, detail: str) -> dict[str, Any]:
    return {"factor": name, "points": round(points, 2), "value": value, "detail": detail}


def score_incident(incident: Mapping[str, Any], model: RiskModel) -> dict[str, Any]:
    """The score, its factors (points > 0, largest first) and the inputs that were missing."""
    enrichment = incident.get("enrichment")
    enrichment = enrichment if isinstance(enrichment, Mapping) else {}
    factors: list[dict[str, Any]] = []
    unavailable: list[str] = []

    severity = canonical_priority(incident.get("severity")) or "Warning"
    factors.append(_factor("severity", model.severity.get(severity, 0), severity, severity))

    events = [e for e in incident.get("events") or () if isinstance(e, Mapping)]
    distinct = max(len({e.get("rule") for e in events}), len({e.get("step") for e in events}))
    extra = max(distinct - 1, 0)
    factors.append(
        _factor(
            "distinct_rules",
            model.distinct_rules.points(extra),
            distinct,
            f"{distinct} distinct Falco rules/steps",
        )
    )

    _vulnerability_factors(enrichment, model, factors, unavailable)
    _posture_factors(enrichment, model, factors, unavailable)

    owner = enrichment.get(model.ownership_from)
    owner = owner if isinstance(owner, Mapping) else {}
    if "error" in owner:
        unavailable.append(f"{model.ownership_from}: {owner['error']}")
    criticality = str(owner.get("criticality", "")).lower()
    if criticality:
        points = model.criticality.get(criticality, 0)
        detail = f"service criticality {criticality} (team {owner.get('team', '?')})"
        factors.append(_factor("criticality", points, criticality, detail))

    contributing = sorted((f for f in factors if f["points"] > 0), key=lambda f: -f["points"])
    score = round(min(sum(f["points"] for f in contributing), 100))
    result: dict[str, Any] = {"score": score, "factors": contributing}
    if unavailable:
        result["unavailable"] = unavailable
    return result


def _vulnerability_factors(
    enrichment: Mapping[str, Any],
    model: RiskModel,
    factors: list[dict[str, Any]],
    unavailable: list[str],
) -> None:
    for source in model.vulnerabilities_from:
        vulns = enrichment.get(source)
        if not isinstance(vulns, Mapping):
            continue
        if "error" in vulns:
            unavailable.append(f"{source}: {vulns['error']}")
            continue
        if vulns.get("status") == "scanned":
            for key, capped, label in (
                ("critical_fixable", model.critical_fixable, "Critical"),
                ("high_fixable", model.high_fixable, "High"),
            ):
                count = int(vulns.get(key) or 0)
                detail = f"{count} {label} CVEs with a fix ({source})"
                factors.append(_factor(key, capped.points(count), count, detail))
            break


def _posture_factors(
    enrichment: Mapping[str, Any],
    model: RiskModel,
    factors: list[dict[str, Any]],
    unavailable: list[str],
) -> None:
    posture = enrichment.get(model.posture_from)
    if isinstance(posture, Mapping) and "error" in posture:
        unavailable.append(f"{model.posture_from}: {posture['error']}")
    elif isinstance(posture, Mapping):
        cis = posture.get("cis")
        if isinstance(cis, Mapping) and isinstance(cis.get("failed"), int):
            failed = cis["failed"]
            detail = f"{failed} failed CIS checks on node {posture.get('node')}"
            factors.append(_factor("cis_failed", model.cis_failed.points(failed), failed, detail))
        exposure = posture.get("exposure")
        if isinstance(exposure, Mapping) and isinstance(exposure.get("by_severity"), Mapping):
            by_severity = exposure["by_severity"]
            raw = sum(model.exposure.get(str(s), 0) * int(n) for s, n in by_severity.items())
            summary = ", ".join(f"{n} {s}" for s, n in sorted(by_severity.items()))
            detail = f"kube-hunter findings on the node: {summary or 'none'}"
            points = min(raw, model.exposure_max)
            factors.append(_factor("exposure", points, dict(by_severity), detail))


class RiskEnricher:
    """`enrichment.<name>`: score, factors; may escalate the incident's severity."""

    default_timeout: ClassVar[float] = 1.0
    late: ClassVar[bool] = True

    def __init__(self, name: str, model: RiskModel | None = None) -> None:
        self.name = name
        self.model = model or RiskModel()

    @classmethod
    def parse_options(cls, options: Fields) -> RiskModel:
        return parse_risk_model(options)

    @classmethod
    def create(cls, name: str, config: RiskModel, context: EnricherContext) -> RiskEnricher:
        return cls(name, config)

    @classmethod
    def from_options(cls, name: str, options: Fields, context: EnricherContext) -> RiskEnricher:
        return cls.create(name, cls.parse_options(options), context)

    async def enrich(self, incident: Mapping[str, Any]) -> dict[str, Any]:
        result = score_incident(incident, self.model)
        owner = (incident.get("enrichment") or {}).get(self.model.ownership_from)
        owner = owner if isinstance(owner, Mapping) else {}
        rank = priority_rank(incident.get("severity"))
        best_rank = -1 if rank is None else rank
        best: tuple[int, EscalationRule] | None = None
        for index, rule in enumerate(self.model.escalate):
            rule_rank = priority_rank(rule.severity)
            if (
                rule_rank is not None
                and rule_rank > best_rank
                and rule.applies(result["score"], owner)
            ):
                best, best_rank = (index, rule), rule_rank
        if best is not None and isinstance(incident, MutableMapping):
            index, rule = best
            result["escalation"] = {
                "from": incident.get("severity"),
                "to": rule.severity,
                "rule": index,
                "reason": f"risk {result['score']} >= {rule.min_score:g}",
            }
            incident["severity"] = rule.severity
        return result


def _points_table(options: Fields, name: str, default: Mapping[str, float]) -> dict[str, float]:
    section = options.section(name)
    table = dict(default)
    for key in section.data:
        table[key] = section.number(key, 0.0, minimum=0.0)
    section.finish()
    return table


def _capped(options: Fields, name: str, default: Capped) -> Capped:
    section = options.section(name)
    capped = Capped(
        section.number("per", default.per, minimum=0.0),
        section.number("max", default.max, minimum=0.0),
    )
    section.finish()
    return capped


def parse_risk_model(options: Fields) -> RiskModel:
    default = RiskModel()
    severity = _points_table(options, "severity", default.severity)
    for key in severity:
        if canonical_priority(key) != key:
            raise ConfigError(
                f"{options.key('severity')}.{key}: not a Falco priority "
                f"({', '.join(PRIORITY_NAMES)})"
            )
    rules = []
    for item in options.items("escalate"):
        target = canonical_priority(item.string("severity"))
        if target is None:
            raise ConfigError(f"{item.key('severity')}: not a Falco priority")
        rules.append(
            EscalationRule(
                item.number("min_score", 0.0, minimum=0.0),
                target,
                item.strings("environments"),
                tuple(c.lower() for c in item.strings("criticalities")),
            )
        )
        item.finish()
    sources = options.section("sources")
    model = RiskModel(
        severity=severity,
        distinct_rules=_capped(options, "distinct_rules", default.distinct_rules),
        critical_fixable=_capped(options, "critical_fixable", default.critical_fixable),
        high_fixable=_capped(options, "high_fixable", default.high_fixable),
        cis_failed=_capped(options, "cis_failed", default.cis_failed),
        exposure=_points_table(options, "exposure", default.exposure),
        exposure_max=options.number("exposure_max", default.exposure_max, minimum=0.0),
        criticality=_points_table(options, "criticality", default.criticality),
        vulnerabilities_from=sources.strings("vulnerabilities") or default.vulnerabilities_from,
        posture_from=sources.string("posture", default.posture_from),
        ownership_from=sources.string("ownership", default.ownership_from),
        escalate=tuple(rules),
    )
    sources.finish()
    options.finish()
    return model
