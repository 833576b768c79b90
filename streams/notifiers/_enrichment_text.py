"""A compact, escaped summary of `incident["enrichment"]` for chat messages.

One line per enricher that has something to say: risk and its main factors, the image's CVEs,
the node's posture, the owner. Everything is escaped: image names and CVE texts come from
systems an attacker may influence. A link is only made of an http(s) URL without Slack's
control characters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streams.notifiers._slack_text import code, escape, fit

__all__ = ["enrichment_lines"]

_SEVERITY_ORDER = ("Critical", "High", "Medium", "Low")


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _link(url: object, label: str) -> str:
    if (
        isinstance(url, str)
        and url.startswith(("https://", "http://"))
        and not any(c in url for c in "<>|\n ")
    ):
        return f" · <{url}|{label}>"
    return ""


def _risk_line(risk: Mapping[str, Any]) -> str | None:
    score = risk.get("score")
    if not isinstance(score, int | float):
        return None
    factors = [f for f in risk.get("factors") or [] if isinstance(f, Mapping)][:3]
    parts = [
        f"{fit(str(f.get('factor', '')), 30)} +{f['points']:g}"
        for f in factors
        if isinstance(f.get("points"), int | float) and not isinstance(f.get("points"), bool)
    ]
    detail = f" ({', '.join(parts)})" if parts else ""
    return f":dart: *Risk {score:g}/100*{detail}"


def _vulnerability_line(name: str, vulns: Mapping[str, Any]) -> str | None:
    if vulns.get("status") == "unknown image":
        return f":package: {name}: image not known to the scanner"
    counts = _mapping(vulns.get("counts"))
    if vulns.get("status") != "scanned" or not counts:
        return None
    shown = [
        f"{counts[s]} {s}" for s in _SEVERITY_ORDER if isinstance(counts.get(s), int) and counts[s]
    ]
    summary = ", ".join(shown) or "no known vulnerabilities"
    fixable = vulns.get("fixable")
    fix_text = f" ({fixable} fixable)" if isinstance(fixable, int) and fixable else ""
    worst = ""
    top = [v for v in vulns.get("top") or [] if isinstance(v, Mapping)]
    if top:
        first = top[0]
        fixed = first.get("fixed_version")
        version = f"{first.get('installed_version') or '?'}" + (f" → {fixed}" if fixed else "")
        cve = code(str(first.get("id", "")), 30)
        package = fit(str(first.get("package", "")), 40)
        worst = f" · worst {cve} {package} {fit(version, 60)}"
    link = _link(vulns.get("link"), "report")
    return f":package: *Image CVEs* ({name}): {summary}{fix_text}{worst}{link}"


def _posture_line(posture: Mapping[str, Any]) -> str | None:
    parts = []
    cis = _mapping(posture.get("cis"))
    if isinstance(cis.get("failed"), int):
        parts.append(f"{cis['failed']} CIS checks failed")
    exposure = _mapping(posture.get("exposure"))
    if isinstance(exposure.get("count"), int) and exposure["count"]:
        parts.append(f"{exposure['count']} kube-hunter finding(s)")
    if not parts:
        return None
    node = fit(str(posture.get("node") or "?"), 60)
    return f":clipboard: *Node* {node}: {', '.join(parts)}"


def _owner_line(owner: Mapping[str, Any]) -> str | None:
    fields = [
        fit(str(owner[k]), 60)
        for k in ("team", "owner", "environment", "criticality", "slack_channel")
        if owner.get(k)
    ]
    return f":busts_in_silhouette: *Owner* {' · '.join(fields)}" if fields else None


def enrichment_lines(
    incident: Mapping[str, Any], kinds: Mapping[str, str] | None = None
) -> list[str]:
    """Escaped mrkdwn lines, empty when the incident carries no enrichment. Each section is
    rendered by its enricher's type: `kinds` maps configured names to types (`name: score` of
    `type: risk`); a name not in it is taken as its type (the default name is the type)."""
    by_name = kinds or {}
    enrichment = _mapping(incident.get("enrichment"))
    lines: list[str] = []
    for name, section in enrichment.items():
        section_map = _mapping(section)
        error = section_map.get("error")
        if error:
            lines.append(f":warning: {escape(str(name))}: {fit(str(error), 120)}")
            continue
        kind = by_name.get(str(name), str(name))
        if kind == "risk":
            line = _risk_line(section_map)
        elif kind in ("harbor", "trivy") or "counts" in section_map:
            line = _vulnerability_line(escape(str(name)), section_map)
        elif kind == "posture":
            line = _posture_line(section_map)
        elif kind == "ownership":
            line = _owner_line(section_map)
        else:
            line = None
        if line:
            lines.append(line)
    # Risk first: it is what a responder reads first.
    lines.sort(key=lambda line: 0 if line.startswith(":dart:") else 1)
    return lines
