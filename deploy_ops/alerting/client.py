"""Alertmanager's v2 HTTP API: post alerts, read them back, ask whether it is up."""

from __future__ import annotations

from typing import Any, Sequence

import requests

from deploy_ops.text import DETAIL, truncate


class AlertmanagerError(RuntimeError):
    """Alertmanager could not be reached or refused the alerts (the outbox retries them)."""


class AlertmanagerClient:
    """A thin client of ``<url>/api/v2``; ``url`` is Alertmanager's base URL (``http://host:9093``)."""

    def __init__(self, url: str, *, timeout: float = 5.0, session: requests.Session | None = None):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise AlertmanagerError(f"Alertmanager URL must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()

    def __repr__(self) -> str:
        return f"AlertmanagerClient({self.url!r})"

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            response = self.session.request(method, f"{self.url}/api/v2{path}", timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise AlertmanagerError(f"Alertmanager at {self.url} unreachable: {truncate(exc, DETAIL)}") from exc
        if response.status_code >= 300:
            raise AlertmanagerError(
                f"Alertmanager at {self.url} answered {response.status_code} to {method} {path}: "
                f"{truncate(response.text.strip(), DETAIL)}"
            )
        return response

    def post_alerts(self, alerts: Sequence[dict[str, Any]]) -> None:
        """Send alerts (``labels``, ``annotations``, ``startsAt``, ``endsAt``); AlertmanagerError if not accepted."""
        if alerts:
            self._call("POST", "/alerts", json=list(alerts))

    def alerts(self, **filters: Any) -> list[dict[str, Any]]:
        """The alerts Alertmanager holds (``active``, ``silenced``, ``inhibited`` filters as in its API)."""
        params = {k: str(v).lower() if isinstance(v, bool) else v for k, v in filters.items()}
        return list(self._call("GET", "/alerts", params=params).json())

    def status(self) -> dict[str, Any]:
        """Alertmanager's status document (version, cluster, the loaded configuration)."""
        return dict(self._call("GET", "/status").json())


__all__ = ["AlertmanagerClient", "AlertmanagerError"]
