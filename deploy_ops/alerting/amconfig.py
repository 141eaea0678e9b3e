"""The repository's Alertmanager configuration, rendered for an Alertmanager on this machine.

``monitoring/alertmanager/alertmanager.yml`` is the production routing tree: real PagerDuty,
an SMTP relay, secrets read from files under ``/etc/alertmanager/secrets``. A local
Alertmanager (tests, ``make monitor``, fire drills) keeps that tree -- routes, grouping,
inhibition, receivers -- and changes only where it sends: the endpoints, the folder of the
secret files and, for tests, the wait times. So what is tested is the tree that ships.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

#: Where the shipped configuration expects its secret files.
SECRETS_DIR = "/etc/alertmanager/secrets"
#: The secret files, by the field that names them.
SECRET_FILES = {
    "pagerduty_routing_key": "pagerduty_routing_key",
    "slack_webhook_url": "slack_webhook_url",
    "smtp_password": "smtp_password",
}
#: Route timings short enough for a test to watch a notification and its resolution.
FAST_TIMINGS = {"group_wait": "1s", "group_interval": "2s", "repeat_interval": "1h"}


def repo_config_path(root: Path) -> Path:
    return root / "monitoring" / "alertmanager" / "alertmanager.yml"


def load(path: Path) -> dict[str, Any]:
    """The configuration file as a mapping (ValueError naming the file if it is not one)."""
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict) or "route" not in data or "receivers" not in data:
        raise ValueError(f"{path} is not an Alertmanager configuration (no route/receivers)")
    return data


@dataclass(frozen=True)
class LocalEndpoints:
    """Where a local Alertmanager sends: the stand-ins for PagerDuty, Slack and the SMTP relay."""

    pagerduty_url: str
    slack_webhook_url: str
    smtp_smarthost: str  #: host:port
    email_to: str = "autotrader-team@localhost"
    smtp_from: str = "autotrader-alerts@localhost"
    pagerduty_routing_key: str = "local-routing-key"
    smtp_password: str = "local-password"
    smtp_require_tls: bool = False
    timings: Mapping[str, str] = field(default_factory=dict)


def _replace_secret_dir(node: Any, secrets_dir: str) -> Any:
    if isinstance(node, dict):
        return {
            k: (
                v.replace(SECRETS_DIR, secrets_dir)
                if k.endswith("_file") and isinstance(v, str)
                else _replace_secret_dir(v, secrets_dir)
            )
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_replace_secret_dir(v, secrets_dir) for v in node]
    return node


def _retime(route: dict[str, Any], timings: Mapping[str, str]) -> None:
    for key, value in timings.items():
        route[key] = value
    for child in route.get("routes", []) or []:
        _retime(child, timings)


def render_local(source: Path, out_dir: Path, endpoints: LocalEndpoints) -> Path:
    """Write ``alertmanager.yml`` and its secret files into ``out_dir`` for a local Alertmanager;
    returns the configuration's path. The routing tree is the one of ``source``."""
    config = load(source)
    out_dir = Path(out_dir)
    secrets = out_dir / "secrets"
    secrets.mkdir(parents=True, exist_ok=True)
    for name, value in (
        ("pagerduty_routing_key", endpoints.pagerduty_routing_key),
        ("slack_webhook_url", endpoints.slack_webhook_url),
        ("smtp_password", endpoints.smtp_password),
    ):
        path = secrets / SECRET_FILES[name]
        path.write_text(value)
        path.chmod(0o600)
    config = _replace_secret_dir(copy.deepcopy(config), str(secrets))
    glob = config.setdefault("global", {})
    glob.update(
        pagerduty_url=endpoints.pagerduty_url,
        smtp_smarthost=endpoints.smtp_smarthost,
        smtp_from=endpoints.smtp_from,
        smtp_require_tls=endpoints.smtp_require_tls,
    )
    for receiver in config["receivers"]:
        for email in receiver.get("email_configs", []) or []:
            email["to"] = endpoints.email_to
    # Template globs are relative to the configuration file: point them at the shipped templates.
    config["templates"] = [str((Path(source).parent / t).resolve()) for t in config.get("templates", [])]
    if endpoints.timings:
        _retime(config["route"], endpoints.timings)
    path = out_dir / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def receiver_for_severity(config: Mapping[str, Any]) -> dict[str, str]:
    """severity -> receiver name, from the top-level routes' ``severity="..."`` matchers."""
    out = {}
    for route in config["route"].get("routes", []) or []:
        for matcher in route.get("matchers", []) or []:
            name, _, value = str(matcher).partition("=")
            if name.strip() == "severity":
                out[value.strip().strip('"')] = route["receiver"]
    return out


#: Debian's Alertmanager reads its default notification templates (and UI) from this absolute
#: folder, which only a system install creates.
DEBIAN_SHARE = b"/usr/share/prometheus/alertmanager"
#: The same folder relative to ``usr/`` of an unpacked package, padded with ``./`` to the same
#: length (a Go string's length is stored apart from its bytes, so the bytes are replaced in place).
RELATIVE_SHARE = b"././/share/prometheus/alertmanager"


def relocated_alertmanager(binary: Path) -> tuple[Path, Path]:
    """A copy of Debian's ``prometheus-alertmanager`` that finds its templates in the unpacked
    package instead of ``/usr/share`` (no system install); returns (binary, working directory to
    run it in). The copy is made once, beside the original."""
    binary = Path(binary)
    usr = binary.resolve().parent.parent
    relocated = binary.with_name(binary.name + "-relocated")
    if not relocated.exists() or relocated.stat().st_mtime < binary.stat().st_mtime:
        data = binary.read_bytes()
        if DEBIAN_SHARE not in data:
            return binary, usr  # not the Debian build: it carries its templates itself
        assert len(DEBIAN_SHARE) == len(RELATIVE_SHARE)
        tmp = relocated.with_name(relocated.name + ".tmp")
        tmp.write_bytes(data.replace(DEBIAN_SHARE, RELATIVE_SHARE))
        tmp.chmod(0o755)
        tmp.replace(relocated)
    if not (usr / "share" / "prometheus" / "alertmanager" / "default.tmpl").exists():
        raise FileNotFoundError(
            f"{usr}/share/prometheus/alertmanager/default.tmpl is missing: unpack the "
            "prometheus-alertmanager package there (make monitoring-tools)"
        )
    return relocated, usr


__all__ = [
    "FAST_TIMINGS",
    "LocalEndpoints",
    "SECRETS_DIR",
    "load",
    "receiver_for_severity",
    "relocated_alertmanager",
    "render_local",
    "repo_config_path",
]
