"""Blue/green slots as local processes: each slot is one ``python -m deploy_ops.serving`` process.

The local profile's deployer (ECS plays the same role in production). It starts a slot, waits
until the slot says it is ready (model loaded, checksum verified), records pid/port/status in
the :class:`~deploy_ops.state.DeploymentStateStore`, stops slots, and reports their health.

Each slot gets its configuration from the deployer, not from the environment: the instruments
it serves (``--instruments``) and the bearer token, written to the child's stdin
(``--token-stdin``) so it appears in no command line. A deployer built with
``require_token=True`` (the production profile) refuses to start a slot without a token, and
passes ``--require-token`` so the process itself refuses too.

Two safety rules:

* a slot that still receives traffic (any routing row, the ``*`` default included, points at it)
  and whose process is alive is never replaced or stopped unless ``force=True``: switch the
  routes away first;
* a pid read back from the store is only signalled if ``/proc`` shows it is still a serving
  process, so a pid reused by the OS after a crash is never killed by mistake.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import requests

from deploy_ops.models.registry import ModelRegistry, ModelVersion
from deploy_ops.procs import pid_running
from deploy_ops.serving.faults import FaultConfig
from deploy_ops.slots.backend import SlotCheck, http_ready_check
from deploy_ops.slots.names import SLOTS
from deploy_ops.slots.scrape_targets import write_targets
from deploy_ops.state import DeploymentStateStore, SlotRecord, StateError

#: Resolves a registry model version to ``(local bundle path, sha256)``.
ModelResolver = Callable[[str], "tuple[str, str]"]

_SERVING_MODULE = "deploy_ops.serving"
_PROJECT_ROOT = Path(__file__).resolve().parent.parent
_TAIL_LINES = 40


class SlotStartError(RuntimeError):
    """A slot process died or never became ready; the message carries the tail of its log."""


class MissingTokenError(RuntimeError):
    """The profile requires a serving token and the deployer was given none: no slot starts."""


class SlotInUseError(RuntimeError):
    """The slot still receives traffic; switch the routes away before replacing or stopping it."""


@dataclass(frozen=True)
class SlotHealth:
    """What a health probe of one slot found."""

    slot: str
    pid: int | None
    pid_alive: bool
    http_ok: bool
    detail: str

    @property
    def healthy(self) -> bool:
        return self.pid_alive and self.http_ok


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS considers free right now (another process may still take it before us)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _read_cmdline(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


class LocalDeployer:
    """Starts, stops and probes serving slots as child processes on this machine."""

    def __init__(
        self,
        state: DeploymentStateStore,
        workdir: str | os.PathLike[str],
        python: str = sys.executable,
        *,
        host: str = "127.0.0.1",
        ready_timeout: float = 60.0,
        stop_grace: float = 10.0,
        resolver: ModelResolver | None = None,
        token: str | None = None,
        require_token: bool = False,
        instruments: Sequence[str] | None = None,
        targets_file: str | os.PathLike[str] | None = None,
    ):
        self.state = state
        #: Prometheus file_sd targets file rewritten on every slot change (None: not written).
        self.targets_file = Path(targets_file) if targets_file is not None else None
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.python = python
        self.host = host
        self.ready_timeout = ready_timeout
        self.stop_grace = stop_grace
        self.resolver = resolver
        self.token = token or None
        self.require_token = require_token
        self.instruments = tuple(instruments) if instruments is not None else None
        self._procs: dict[str, subprocess.Popen] = {}
        self._http = requests.Session()

    def __enter__(self) -> LocalDeployer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def log_path(self, slot: str) -> Path:
        """Where a slot's stdout and stderr go (appended across restarts)."""
        return self.workdir / f"{slot}.log"

    # -- start -----------------------------------------------------------------------------------
    def start_version(
        self, slot: str, version: str, *, port: int | None = None, faults: FaultConfig | None = None
    ) -> SlotRecord:
        """Resolve a registry version through the resolver given at construction, then start it."""
        if self.resolver is None:
            raise RuntimeError("this LocalDeployer has no resolver: pass resolver=... or call start_slot with a path")
        model_path, sha256 = self.resolver(version)
        return self.start_slot(slot, model_path, sha256, version, port=port, faults=faults)

    def start_slot(
        self,
        slot: str,
        model_path: str | os.PathLike[str],
        sha256: str,
        version: str,
        port: int | None = None,
        faults: FaultConfig | None = None,
        *,
        force: bool = False,
    ) -> SlotRecord:
        """Launch the serving process for ``slot`` and return once it is ready.

        ``port=None`` picks a free port. ``faults`` (drills and tests only) makes the process
        misbehave on purpose, through its ``--fault-*`` arguments. A live process already in the slot is
        stopped first, unless traffic is routed to it (SlotInUseError; ``force=True`` overrides).
        Raises SlotStartError, with the log tail, if the process dies or is not ready in time."""
        if slot not in SLOTS:
            raise StateError(f"unknown slot {slot!r}; slots are {SLOTS}")
        if self.require_token and self.token is None:
            raise MissingTokenError(
                f"refusing to start slot {slot}: this profile requires a serving token and none is set "
                "(AUTOTRADER_SERVING_TOKEN); /predict would be open to anyone"
            )
        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(f"model bundle {model_path} does not exist")
        if self.is_alive(slot):
            self._refuse_if_routed(slot, "replace", force)
            self.stop_slot(slot, force=True)

        attempts = 1 if port is not None else 3
        for attempt in range(1, attempts + 1):
            chosen = port if port is not None else free_port(self.host)
            try:
                return self._start_once(slot, model_path, sha256, version, chosen, faults)
            except SlotStartError as exc:
                # Another process may grab a probed port before the child binds it: try another.
                if isinstance(exc, _PortTaken) and attempt < attempts:
                    continue
                self.state.record_event(
                    "slot_start_failed",
                    f"slot {slot} ({version}) failed to start",
                    severity="critical",
                    details={"slot": slot, "version": version, "error": str(exc)[-2000:]},
                )
                raise
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _start_once(
        self,
        slot: str,
        model_path: Path,
        sha256: str,
        version: str,
        port: int,
        faults: FaultConfig | None,
    ) -> SlotRecord:
        log_path = self.log_path(slot)
        with open(log_path, "ab") as log:
            log.write(
                f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} start slot={slot} version={version} "
                f"port={port} ===\n".encode()
            )
            log_offset = log.tell()
            child_env = self._child_env()
            proc = subprocess.Popen(
                self._command(slot, model_path, sha256, version, port, faults),
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env,
                cwd=str(self.workdir),
                # Own session and process group: signals reach the whole slot and never the caller.
                start_new_session=True,
            )
            # The token travels on stdin (one line, then EOF), never in argv or the child's env.
            with contextlib.suppress(BrokenPipeError):  # a child that died at once is reported below
                proc.stdin.write(f"{self.token or ''}\n".encode())
            proc.stdin.close()
        self._procs[slot] = proc
        url = f"http://{self.host}:{port}"
        self.state.set_slot(slot, status="starting", version=version, url=url, host=self.host, port=port, pid=proc.pid)
        self.publish_targets()
        try:
            self._wait_ready(slot, proc, url, log_path, log_offset)
        except SlotStartError:
            self._kill_group(proc.pid, proc)
            self.state.set_slot(
                slot, status="failed", version=version, url=url, host=self.host, port=port, pid=proc.pid
            )
            self.publish_targets()
            raise
        info = self.state.set_slot(
            slot, status="ready", version=version, url=url, host=self.host, port=port, pid=proc.pid
        )
        self.publish_targets()
        self.state.record_event(
            "slot_started",
            f"slot {slot} serves {version} at {url}",
            details={"slot": slot, "version": version, "url": url, "pid": proc.pid},
        )
        return info

    def _command(
        self, slot: str, model_path: Path, sha256: str, version: str, port: int, faults: FaultConfig | None
    ) -> list[str]:
        command = [
            self.python,
            "-m",
            _SERVING_MODULE,
            "--model",
            str(model_path.resolve()),
            "--sha256",
            sha256,
            "--version",
            version,
            "--slot",
            slot,
            "--port",
            str(port),
            "--host",
            self.host,
            "--token-stdin",
        ]
        if self.instruments is not None:
            command += ["--instruments", ",".join(self.instruments)]
        if self.require_token:
            command.append("--require-token")
        if faults is not None and faults.active:
            command += ["--fault-error-rate", repr(faults.error_rate), "--fault-latency-ms", repr(faults.latency_ms)]
        return command

    def _child_env(self) -> dict[str, str]:
        child = dict(os.environ)
        child["PYTHONUNBUFFERED"] = "1"
        # The serving module must import even when the project is not installed into `python`.
        child["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PROJECT_ROOT), child.get("PYTHONPATH")) if p)
        return child

    def _wait_ready(self, slot: str, proc: subprocess.Popen, url: str, log_path: Path, log_offset: int) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            code = proc.poll()
            if code is not None:
                tail = _log_tail(log_path, log_offset)
                if "address already in use" in tail.lower():
                    raise _PortTaken(f"slot {slot}: port of {url} already in use\n{tail}")
                raise SlotStartError(f"slot {slot} exited with code {code} before becoming ready; log tail:\n{tail}")
            try:
                response = self._http.get(f"{url}/ready", timeout=1.0)
            except requests.RequestException:
                response = None  # not listening yet
            if response is not None:
                body = _json_or_text(response)
                if response.status_code == 200:
                    # The pid check rules out another server already listening on this port.
                    if isinstance(body, dict) and body.get("pid") == proc.pid:
                        return
                    raise _PortTaken(f"slot {slot}: {url} is answered by another process ({body!r:.200})")
                if isinstance(body, dict) and body.get("status") == "failed":
                    # A failed load (bad checksum, unreadable bundle) never heals by waiting.
                    raise SlotStartError(
                        f"slot {slot} refused to become ready: {body.get('error')}; log tail:\n"
                        f"{_log_tail(log_path, log_offset)}"
                    )
            if time.monotonic() > deadline:
                raise SlotStartError(
                    f"slot {slot} not ready after {self.ready_timeout:.0f}s; log tail:\n{_log_tail(log_path, log_offset)}"
                )
            time.sleep(0.05)

    # -- stop ------------------------------------------------------------------------------------
    def stop_slot(self, slot: str, *, grace: float | None = None, force: bool = False) -> SlotRecord | None:
        """SIGTERM the slot's process group, SIGKILL after ``grace`` seconds, record it stopped.

        Refuses (SlotInUseError) while traffic is routed to a live slot unless ``force=True``.
        Returns the recorded slot, or None if the slot was never recorded."""
        if slot not in SLOTS:
            raise StateError(f"unknown slot {slot!r}; slots are {SLOTS}")
        info = self.state.get_slot(slot)
        if info is None:
            return None
        proc = self._own_proc(slot, info.pid)
        if info.pid is not None and self._pid_alive(info.pid, proc):
            self._refuse_if_routed(slot, "stop", force)
            self._kill_group(info.pid, proc, grace=self.stop_grace if grace is None else grace)
        self._procs.pop(slot, None)
        stopped = self.state.set_slot_status(slot, "stopped")
        self.publish_targets()
        self.state.record_event(
            "slot_stopped",
            f"slot {slot} ({info.version}) stopped",
            details={"slot": slot, "version": info.version, "pid": info.pid},
        )
        return stopped

    def stop_all(self) -> None:
        """Stop every slot this deployer started (traffic or not): for shutdown and test teardown."""
        for slot in list(self._procs):
            self.stop_slot(slot, force=True)

    def _refuse_if_routed(self, slot: str, action: str, force: bool) -> None:
        if force:
            return
        routed = sorted(i for i, s in self.state.routing_table().items() if s == slot)
        if routed:
            raise SlotInUseError(
                f"refusing to {action} slot {slot}: routes {routed} still point at it; "
                f"switch them away first or pass force=True"
            )

    def _kill_group(self, pid: int, proc: subprocess.Popen | None, grace: float = 5.0) -> None:
        if proc is None and not self._is_serving_pid(pid):
            return  # the pid now belongs to something else: never signal it
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            except PermissionError:
                os.kill(pid, sig)
            if self._wait_exit(pid, proc, wait):
                break

    def _wait_exit(self, pid: int, proc: subprocess.Popen | None, timeout: float) -> bool:
        if proc is not None:
            try:
                proc.wait(timeout=timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._pid_alive(pid, None):
                return True
            time.sleep(0.05)
        return not self._pid_alive(pid, None)

    def publish_targets(self) -> None:
        """Rewrite the Prometheus targets file from the recorded slots (scrape_targets.py), if set."""
        if self.targets_file is not None:
            write_targets(self.targets_file, self.state.slots())

    # -- health ----------------------------------------------------------------------------------
    def is_alive(self, slot: str) -> bool:
        """Whether the slot's recorded process is running (a process check only, no HTTP)."""
        info = self.state.get_slot(slot)
        if info is None or info.pid is None:
            return False
        return self._pid_alive(info.pid, self._own_proc(slot, info.pid))

    def slot_health(self, slot: str, timeout: float = 1.0) -> SlotHealth:
        """Probe a slot: its process must be alive AND answer ``GET /health`` with 200."""
        info = self.state.get_slot(slot)
        if info is None:
            return SlotHealth(slot, None, False, False, "slot never recorded")
        alive = info.pid is not None and self._pid_alive(info.pid, self._own_proc(slot, info.pid))
        if not info.url:
            return SlotHealth(slot, info.pid, alive, False, "no url recorded")
        try:
            response = self._http.get(f"{info.url}/health", timeout=timeout)
            http_ok = response.status_code == 200
            detail = f"/health answered {response.status_code}"
        except requests.RequestException as exc:
            http_ok, detail = False, f"/health unreachable: {type(exc).__name__}"
        if not alive:
            detail = f"process {info.pid} is not running; {detail}"
        return SlotHealth(slot, info.pid, alive, http_ok, detail)

    def reconcile(self) -> list[SlotHealth]:
        """Mark slots recorded ready/starting whose process is gone or unhealthy as failed, with a
        critical ``slot_down`` event each; returns the probes of the slots it marked."""
        marked = []
        for slot, info in self.state.slots().items():
            if info.status not in ("ready", "starting"):
                continue
            health = self.slot_health(slot)
            if health.healthy:
                continue
            self.state.set_slot_status(slot, "failed")
            self.publish_targets()
            self.state.record_event(
                "slot_down",
                f"slot {slot} ({info.version}) is down: {health.detail}",
                severity="critical",
                details={"slot": slot, "version": info.version, "pid": info.pid, "detail": health.detail},
            )
            marked.append(health)
        return marked

    def _own_proc(self, slot: str, pid: int | None) -> subprocess.Popen | None:
        proc = self._procs.get(slot)
        return proc if proc is not None and proc.pid == pid else None

    def _pid_alive(self, pid: int, proc: subprocess.Popen | None) -> bool:
        if proc is not None:
            return proc.poll() is None  # also reaps our own zombie
        return self._is_serving_pid(pid)

    @staticmethod
    def _is_serving_pid(pid: int) -> bool:
        # A pid owned by someone else counts as running: the cmdline check decides.
        if not pid_running(pid):
            return False
        cmdline = _read_cmdline(pid)
        return cmdline is not None and _SERVING_MODULE in cmdline


class _PortTaken(SlotStartError):
    """The child could not bind its port: worth one more try on another port."""


def _log_tail(path: Path, offset: int = 0, lines: int = _TAIL_LINES) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _json_or_text(response: requests.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return response.text


class LocalBackend:
    """Slots as local processes through :class:`~deploy_ops.slots.local.LocalDeployer`."""

    kind = "local"

    def __init__(self, deployer: Any, registry: ModelRegistry):
        self.deployer = deployer
        self.registry = registry
        # The deployer hands its slots their token and instruments; the backend's clients follow it.
        self.token = deployer.token
        self.instruments = deployer.instruments
        self.model_dir = Path(deployer.workdir) / "models"

    def model_path(self, mv: ModelVersion) -> Path:
        """A local file holding the version's artifact (the registry's own file when it is local)."""
        local = Path(mv.artifact_uri)
        if "://" not in mv.artifact_uri and local.is_file():
            return local
        # Remote artifacts (S3) are fetched once and cached by checksum; the serving process
        # verifies the sha256 again at load.
        path = self.model_dir / f"{mv.sha256}.pt"
        if not path.is_file():
            data = self.registry.artifacts.get(mv.artifact_uri, mv.sha256)
            self.model_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return path

    def start(self, slot: str, mv: ModelVersion, *, faults: FaultConfig | None = None, force: bool = False) -> str:
        info = self.deployer.start_slot(
            slot, self.model_path(mv), mv.sha256, str(mv.version), faults=faults, force=force
        )
        return info.url

    def stop(self, slot: str, *, force: bool = False) -> None:
        self.deployer.stop_slot(slot, force=force)

    def check(self, slot: str, expected_version: str | None) -> SlotCheck:
        health = self.deployer.slot_health(slot)
        if not health.healthy:
            return SlotCheck(slot, False, health.detail)
        info = self.deployer.state.get_slot(slot)
        return http_ready_check(slot, info.url if info else None, expected_version, self.token)

    def set_weights(self, weights: Mapping[str, int]) -> None:
        return None
