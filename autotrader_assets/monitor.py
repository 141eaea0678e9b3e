"""``make monitor``: the project's own Prometheus, Pushgateway and Alertmanager (``make
monitoring-tools`` unpacks them into ``.tools/monitoring``) on loopback ports, with the repository's
configuration, watching the local profile (the embedded default).

Prometheus gets a copy of ``monitoring/prometheus/prometheus.yml`` rendered for this machine: the
rules of ``monitoring/prometheus/rules/``, the serving slots from the file_sd targets file the local
deployer keeps (``Settings.prometheus_targets_file``, written now from the recorded slots), this
Pushgateway and this Alertmanager. Alertmanager starts only when
``monitoring/alertmanager/alertmanager.yml`` exists. Everything they store goes under
``AUTOTRADER_HOME/monitoring/``. The tests start the same stack with :class:`MonitoringStack`.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from autotrader_assets.settings import PROJECT_ROOT, Settings, get_settings

TOOLS = PROJECT_ROOT / ".tools" / "monitoring" / "usr" / "bin"
PROMETHEUS_DIR = PROJECT_ROOT / "monitoring" / "prometheus"
ALERTMANAGER_CONFIG = PROJECT_ROOT / "monitoring" / "alertmanager" / "alertmanager.yml"
SERVING_JOB = "autotrader-serving"
PUSHGATEWAY_JOB = "pushgateway"


class MonitoringError(RuntimeError):
    """A binary is missing, a port is taken, or a process never became ready (its log tail attached)."""


def render_prometheus_config(
    *,
    targets_file: Path,
    pushgateway: str,
    prometheus: str,
    alertmanager: str | None,
    scrape_interval: str | None = None,
    source: Path = PROMETHEUS_DIR / "prometheus.yml",
    rules_dir: Path | None = None,
) -> dict:
    """The repository's prometheus.yml with this machine's addresses and absolute paths
    (``rules_dir``: a rendered copy of the rules, ``deploy_ops.alerting.rules``, instead of the
    repository's)."""
    config = yaml.safe_load(source.read_text())
    if scrape_interval:
        config["global"]["scrape_interval"] = scrape_interval
        config["global"]["evaluation_interval"] = scrape_interval
    if rules_dir is not None:
        config["rule_files"] = [str(Path(rules_dir).resolve() / "*.yml")]
    else:
        config["rule_files"] = [str((source.parent / pattern).resolve()) for pattern in config["rule_files"]]
    if alertmanager:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    else:
        config.pop("alerting", None)
    for job in config["scrape_configs"]:
        if scrape_interval:
            job["scrape_interval"] = scrape_interval
        if job["job_name"] == SERVING_JOB:
            job["file_sd_configs"] = [{"files": [str(targets_file)], "refresh_interval": "5s"}]
        elif job["job_name"] == PUSHGATEWAY_JOB:
            job["static_configs"] = [{"targets": [pushgateway]}]
        elif job["job_name"] == "prometheus":
            job["static_configs"] = [{"targets": [prometheus]}]
    return config


@dataclass
class MonitoringStack:
    """Prometheus + Pushgateway (+ Alertmanager) as child processes on 127.0.0.1."""

    workdir: Path
    targets_file: Path
    prometheus_port: int
    pushgateway_port: int
    alertmanager_port: int | None = None
    alertmanager_config: Path | None = None
    scrape_interval: str | None = None
    #: A rendered copy of the rules (``deploy_ops.alerting.rules.render_rules``); None: the repository's.
    rules_dir: Path | None = None
    tools: Path = TOOLS
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    @property
    def pushgateway_url(self) -> str:
        return f"http://127.0.0.1:{self.pushgateway_port}"

    @property
    def alertmanager_url(self) -> str | None:
        return f"http://127.0.0.1:{self.alertmanager_port}" if "alertmanager" in self.procs else None

    def _binary(self, name: str) -> str:
        path = self.tools / name
        if not path.is_file():
            raise MonitoringError(f"{path} is missing: run `make monitoring-tools`")
        return str(path)

    def start(self, ready_timeout: float = 30.0) -> MonitoringStack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.targets_file.exists():
            self.targets_file.parent.mkdir(parents=True, exist_ok=True)
            self.targets_file.write_text("[]\n")
        with_am = (
            self.alertmanager_port is not None
            and self.alertmanager_config is not None
            and self.alertmanager_config.is_file()
        )
        config = render_prometheus_config(
            targets_file=self.targets_file,
            pushgateway=f"127.0.0.1:{self.pushgateway_port}",
            prometheus=f"127.0.0.1:{self.prometheus_port}",
            alertmanager=f"127.0.0.1:{self.alertmanager_port}" if with_am else None,
            scrape_interval=self.scrape_interval,
            rules_dir=self.rules_dir,
        )
        rendered = self.workdir / "prometheus.yml"
        rendered.write_text(yaml.safe_dump(config, sort_keys=False))
        commands = {
            "pushgateway": [
                self._binary("prometheus-pushgateway"),
                f"--web.listen-address=127.0.0.1:{self.pushgateway_port}",
            ],
            "prometheus": [
                self._binary("prometheus"),
                f"--config.file={rendered}",
                f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{self.prometheus_port}",
                "--web.enable-lifecycle",
            ],
        }
        cwd = {name: self.workdir for name in ("pushgateway", "prometheus")}
        if with_am:
            from deploy_ops.alerting.amconfig import relocated_alertmanager

            # Debian's build looks for its templates under /usr/share; the relocated copy finds them
            # in the unpacked package when run from its usr/ folder.
            binary, cwd["alertmanager"] = relocated_alertmanager(Path(self._binary("prometheus-alertmanager")))
            commands["alertmanager"] = [
                str(binary),
                f"--config.file={self.alertmanager_config}",
                f"--storage.path={self.workdir / 'alertmanager-data'}",
                f"--web.listen-address=127.0.0.1:{self.alertmanager_port}",
                "--cluster.listen-address=",  # one instance: no gossip port to collide with
            ]
        try:
            for name, command in commands.items():
                log = open(self.workdir / f"{name}.log", "ab")
                self.procs[name] = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, cwd=str(cwd[name]), start_new_session=True
                )
                log.close()
            for name, url in (
                ("pushgateway", self.pushgateway_url),
                ("prometheus", self.prometheus_url),
                ("alertmanager", f"http://127.0.0.1:{self.alertmanager_port}"),
            ):
                if name in self.procs:
                    self._wait_ready(name, url, ready_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, name: str, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        proc = self.procs[name]
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise MonitoringError(f"{name} exited with code {proc.returncode}:\n{self.log_tail(name)}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/-/ready", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.1)
        raise MonitoringError(f"{name} not ready at {url} after {timeout:.0f}s:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        self.procs.clear()

    def __enter__(self) -> MonitoringStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stack_for(
    settings: Settings, prometheus_port: int, pushgateway_port: int, alertmanager_port: int
) -> MonitoringStack:
    """The stack ``make monitor`` runs: state under the home, targets from the recorded slots."""
    from deploy_ops.slots.scrape_targets import write_targets
    from deploy_ops.state import DeploymentStateStore

    targets = settings.prometheus_targets_file or settings.home / "monitoring" / "serving_targets.json"
    # Slots started before this Prometheus are scraped too: write the file from the state now.
    write_targets(targets, DeploymentStateStore(settings.registry_url).slots())
    workdir = settings.home / "monitoring"
    am_config = None
    if ALERTMANAGER_CONFIG.is_file():
        from deploy_ops.alerting.amconfig import LocalEndpoints, render_local

        # The shipped routing tree with nowhere real to send: this machine has no PagerDuty, Slack
        # or mail relay, so notifications fail in Alertmanager's log and the alerts show in its UI.
        am_config = render_local(
            ALERTMANAGER_CONFIG,
            workdir / "alertmanager",
            LocalEndpoints(
                pagerduty_url="http://127.0.0.1:9/pagerduty",
                slack_webhook_url="http://127.0.0.1:9/slack",
                smtp_smarthost="127.0.0.1:25",
            ),
        )
    from deploy_ops.alerting.rules import render_rules

    # The rules' runbook links start with the same AUTOTRADER_RUNBOOK_BASE_URL as the events' do.
    rules_dir = workdir / "rules"
    render_rules(PROMETHEUS_DIR / "rules", rules_dir, runbook_base_url=settings.runbook_base_url)
    return MonitoringStack(
        workdir=workdir,
        targets_file=targets,
        prometheus_port=prometheus_port,
        pushgateway_port=pushgateway_port,
        alertmanager_port=alertmanager_port,
        alertmanager_config=am_config,
        rules_dir=rules_dir,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prometheus, Pushgateway and Alertmanager for the local profile.")
    parser.add_argument("--prometheus-port", type=int, default=9090)
    parser.add_argument("--pushgateway-port", type=int, default=9091)
    parser.add_argument("--alertmanager-port", type=int, default=9093)
    args = parser.parse_args(argv)
    settings = get_settings()
    stack = stack_for(settings, args.prometheus_port, args.pushgateway_port, args.alertmanager_port)
    try:
        stack.start()
    except MonitoringError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    print(f"Prometheus    {stack.prometheus_url}  (alerts: {stack.prometheus_url}/alerts)")
    print(f"Pushgateway   {stack.pushgateway_url}")
    if stack.alertmanager_url:
        print(f"Alertmanager  {stack.alertmanager_url}")
    else:
        print(f"Alertmanager  not started: {ALERTMANAGER_CONFIG.relative_to(PROJECT_ROOT)} does not exist")
    print(f"Serving slots scraped from {stack.targets_file} (the local deployer rewrites it)")
    print("For the batch jobs to push, run them with:")
    print(f"  export AUTOTRADER_PUSHGATEWAY_URL={stack.pushgateway_url}")
    if stack.alertmanager_url:
        print(f"  export AUTOTRADER_ALERTMANAGER_URL={stack.alertmanager_url}")
    print(f"Logs and data in {stack.workdir}. Ctrl-C stops all three.")
    # SIGTERM (kill, a supervisor) must stop the children too: they run in sessions of their own.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while all(p.poll() is None for p in stack.procs.values()):
            time.sleep(1.0)
        dead = [n for n, p in stack.procs.items() if p.poll() is not None]
        print(f"Error: {', '.join(dead)} exited:\n" + "\n".join(stack.log_tail(n) for n in dead), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
