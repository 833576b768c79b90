"""The Slack message shows an incident's enrichment compactly, escaped."""

from __future__ import annotations

from typing import Any

from streams.notifiers._enrichment_text import enrichment_lines
from streams.notifiers.slack import SlackConfig, build_slack_payload

ENRICHED: dict[str, Any] = {
    "harbor": {
        "status": "scanned",
        "counts": {"Critical": 3, "High": 1, "Medium": 0, "Low": 2},
        "fixable": 2,
        "top": [
            {
                "id": "CVE-2023-38545",
                "package": "curl",
                "installed_version": "8.2.1-r0",
                "fixed_version": "8.4.0-r0",
                "severity": "Critical",
            }
        ],
        "link": "https://harbor.example.com/harbor/projects/3/repositories/shop%2Fcheckout",
    },
    "posture": {"node": "worker-1", "cis": {"failed": 12}, "exposure": {"count": 1}},
    "ownership": {"team": "Payments", "criticality": "critical", "slack_channel": "#pay-sec"},
    "risk": {
        "score": 92,
        "factors": [
            {"factor": "severity", "points": 40},
            {"factor": "critical_fixable", "points": 20},
        ],
    },
    "trivy": {"error": "timed out after 2s <!channel>"},
}


def _incident(enrichment: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "a" * 32,
        "status": "new",
        "correlation": "Shell then outbound connection",
        "severity": "Critical",
        "output": "shell then egress",
        "key": {"container.id": "c1"},
        "count": 1,
        "first_seen": "2024-05-01T12:00:00.000000000Z",
        "last_seen": "2024-05-01T12:00:45.000000000Z",
        "events": [],
        "tags": [],
        "context": {},
        "enrichment": enrichment,
    }


def test_enrichment_lines_summarise_risk_first_then_cves_posture_owner_and_errors() -> None:
    lines = enrichment_lines(_incident(ENRICHED))
    assert lines[0] == ":dart: *Risk 92/100* (severity +40, critical_fixable +20)"
    text = "\n".join(lines)
    assert "3 Critical, 1 High, 2 Low (2 fixable)" in text
    assert "`CVE-2023-38545` curl 8.2.1-r0 → 8.4.0-r0" in text
    link = "https://harbor.example.com/harbor/projects/3/repositories/shop%2Fcheckout"
    assert f"<{link}|report>" in text
    assert "worker-1: 12 CIS checks failed, 1 kube-hunter finding(s)" in text
    assert "Payments · critical · #pay-sec" in text
    assert ":warning: trivy: timed out after 2s &lt;!channel&gt;" in text


def test_a_link_with_slack_control_characters_is_not_made_a_link() -> None:
    hostile = dict(ENRICHED["harbor"], link="https://x.example/|<!channel>")
    lines = enrichment_lines(_incident({"harbor": hostile}))
    assert "<https://" not in lines[0]


def test_the_slack_message_carries_the_enrichment_block_only_when_enriched() -> None:
    config = SlackConfig()
    plain = build_slack_payload(_incident({}), config)
    rich = build_slack_payload(_incident(ENRICHED), config)
    assert len(rich["blocks"]) == len(plain["blocks"]) + 1
    assert "Risk 92/100" in rich["blocks"][2]["text"]["text"]


def test_channel_from_sends_to_the_owners_channel_and_falls_back_to_the_configured_one() -> None:
    config = SlackConfig(channel="#security", channel_from="enrichment.ownership.slack_channel")
    owned = build_slack_payload(_incident(ENRICHED), config)
    unowned = build_slack_payload(_incident({}), config)
    hostile = build_slack_payload(
        _incident({"ownership": {"slack_channel": "<!channel> x"}}), config
    )
    assert owned["channel"] == "#pay-sec"
    assert unowned["channel"] == "#security"
    assert hostile["channel"] == "#security"


def test_a_route_on_an_enrichment_field_selects_the_owning_team() -> None:
    from streams._config_fields import Fields
    from streams.notifiers.routing import incident_value, parse_route

    route = parse_route(Fields({"fields": {"enrichment.ownership.team": ["Pay*"]}}, "route"))
    assert route.matches(_incident(ENRICHED))
    assert not route.matches(_incident({"ownership": {"team": "Checkout"}}))
    assert not route.matches(_incident({}))
    assert incident_value(_incident(ENRICHED), "key.container.id") == "c1"


def test_a_renamed_enricher_keeps_its_line_because_lines_are_chosen_by_type() -> None:
    """`name: score` of a `type: risk` enricher writes `enrichment.score`: the line is chosen by
    the enricher's type (the worker passes name -> type), not by the name it was given."""
    renamed = {"score": ENRICHED["risk"], "owners": ENRICHED["ownership"]}
    kinds = {"score": "risk", "owners": "ownership"}
    lines = enrichment_lines(_incident(renamed), kinds)
    assert lines == enrichment_lines(_incident(ENRICHED_RISK_AND_OWNER))
    payload = build_slack_payload(_incident(renamed), SlackConfig(), kinds)
    assert "Risk 92/100" in payload["blocks"][2]["text"]["text"]
    assert "Payments" in payload["blocks"][2]["text"]["text"]
    # a name that is not listed is its own type, so the default names need no map
    assert enrichment_lines(_incident(ENRICHED)) == enrichment_lines(
        _incident(ENRICHED), {"risk": "risk"}
    )


ENRICHED_RISK_AND_OWNER = {"risk": ENRICHED["risk"], "ownership": ENRICHED["ownership"]}
