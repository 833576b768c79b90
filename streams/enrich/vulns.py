"""One vulnerability summary for Harbor and Trivy reports: counts, fixable, the worst CVEs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "SEVERITIES",
    "Vulnerability",
    "canonical_severity",
    "cvss_score",
    "summarize_vulnerabilities",
    "text",
]

# Most severe first; Harbor's names (Trivy's upper-case ones map onto them).
SEVERITIES: tuple[str, ...] = ("Critical", "High", "Medium", "Low", "Negligible", "Unknown")
_RANK = {name: len(SEVERITIES) - index for index, name in enumerate(SEVERITIES)}
_ALIASES = {"none": "Unknown", "unspecified": "Unknown", "informational": "Low"}


def canonical_severity(value: object) -> str:
    """`CRITICAL`, `critical`, `Critical` -> `Critical`; anything unknown -> `Unknown`."""
    text = str(value or "").strip().lower()
    if text in _ALIASES:
        return _ALIASES[text]
    for name in SEVERITIES:
        if name.lower() == text:
            return name
    return "Unknown"


@dataclass(frozen=True, slots=True)
class Vulnerability:
    id: str
    package: str
    version: str
    fixed_version: str
    severity: str
    score: float | None = None
    link: str | None = None

    @property
    def fixable(self) -> bool:
        return bool(self.fixed_version)

    def sort_key(self) -> tuple[int, int, float, str, str]:
        """Worst first: severity, then fixable, then CVSS score, then id."""
        return (
            -_RANK.get(self.severity, 0),
            0 if self.fixable else 1,
            -(self.score or 0.0),
            self.id,
            self.package,
        )

    def to_dict(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "id": self.id,
            "severity": self.severity,
            "package": self.package,
            "installed_version": self.version,
            "fixed_version": self.fixed_version or None,
        }
        if self.score is not None:
            item["cvss_score"] = self.score
        if self.link:
            item["link"] = self.link
        return item


def summarize_vulnerabilities(items: Iterable[Vulnerability], top: int) -> dict[str, Any]:
    """Counts by severity (every severity present, zeros included), totals, fixable counts
    and the `top` worst, de-duplicated on (id, package, installed version)."""
    unique: dict[tuple[str, str, str], Vulnerability] = {}
    for item in items:
        unique.setdefault((item.id, item.package, item.version), item)
    vulns = sorted(unique.values(), key=Vulnerability.sort_key)
    counts = dict.fromkeys(SEVERITIES, 0)
    for vuln in vulns:
        counts[vuln.severity] += 1
    return {
        "counts": counts,
        "total": len(vulns),
        "fixable": sum(1 for v in vulns if v.fixable),
        "critical_fixable": sum(1 for v in vulns if v.fixable and v.severity == "Critical"),
        "high_fixable": sum(1 for v in vulns if v.fixable and v.severity == "High"),
        "top": [v.to_dict() for v in vulns[:top]],
    }


def cvss_score(value: object) -> float | None:
    """A positive number from a CVSS field, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return float(value)


def text(mapping: Mapping[str, Any], key: str) -> str:
    value = mapping.get(key)
    return value.strip() if isinstance(value, str) else ""
