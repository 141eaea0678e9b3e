"""The repository's Prometheus alert rules, rendered for one Prometheus.

``monitoring/prometheus/rules/*.yml`` write every ``runbook_url`` relative to the repository
(``docs/runbooks/alerts.md#<alert>``), exactly as the platform's event alerts do when
``AUTOTRADER_RUNBOOK_BASE_URL`` is unset. :func:`render_rules` writes a copy whose runbook links
start with that same base URL, so a page carries the same kind of link whichever source raised it
(``make monitor`` renders them this way). Tests that must watch a rule fire within seconds also
pass shortened ``for`` durations here, so the rules they run are the shipped ones with only the
waits changed, and the change is stated where they call it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import yaml


class RulesError(ValueError):
    """A rules file is not a Prometheus rules file, or an override names an alert it lacks."""


def load_rules(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict) or not isinstance(data.get("groups"), list):
        raise RulesError(f"{path} is not a Prometheus rules file (no groups list)")
    return data


def alert_rules(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every alerting rule of a rules file (recording rules left out)."""
    return [rule for group in data["groups"] for rule in group.get("rules", []) or [] if "alert" in rule]


def render_rules(
    source_dir: Path,
    out_dir: Path,
    *,
    runbook_base_url: str = "",
    durations: Mapping[str, str] | None = None,
    evaluation_interval: str | None = None,
) -> list[Path]:
    """Write every ``*.yml`` of ``source_dir`` into ``out_dir``: runbook URLs prefixed with
    ``runbook_base_url`` (those already absolute kept), the ``for`` of each alert named in
    ``durations`` replaced ("0s" removes the wait), and with ``evaluation_interval`` each group's
    ``interval`` set. Returns the written files. An alert name in ``durations`` that no rule has
    raises :class:`RulesError` (a typo would otherwise leave a test waiting for hours)."""
    durations = dict(durations or {})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    written = []
    for path in sorted(Path(source_dir).glob("*.yml")):
        data = copy.deepcopy(load_rules(path))
        for group in data["groups"]:
            if evaluation_interval:
                group["interval"] = evaluation_interval
        for rule in alert_rules(data):
            seen.add(rule["alert"])
            annotations = rule.get("annotations") or {}
            url = annotations.get("runbook_url")
            if url and runbook_base_url and "://" not in url:
                annotations["runbook_url"] = runbook_base_url + url
            if rule["alert"] in durations:
                rule["for"] = durations[rule["alert"]]
        target = out_dir / path.name
        target.write_text(yaml.safe_dump(data, sort_keys=False, width=1000))
        written.append(target)
    unknown = sorted(set(durations) - seen)
    if unknown:
        raise RulesError(f"no alert rule named {unknown} in {source_dir}")
    return written


__all__ = ["RulesError", "alert_rules", "load_rules", "render_rules"]
