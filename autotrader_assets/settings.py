"""The one place that reads the environment.

Two profiles:

* ``local`` (the default, no configuration at all): everything lives under ``AUTOTRADER_HOME``
  (``./.autotrader`` beside the project): a DuckDB warehouse file, the archive and model
  artifacts on the local disk, the registry and deployment state in SQLite.
* ``production``: registry and deployment state on PostgreSQL, archive and artifacts on S3,
  the warehouse on a shared (EFS) mount, the Dagster instance on PostgreSQL, serving on ECS.
  Connection strings and secrets come from environment variables only. A production profile
  with a local or missing store refuses to start and lists every problem
  (:func:`production_problems`).

This module deliberately imports nothing from Dagster so that ``deploy_ops`` callers (the CLI)
can use it too.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

#: Instruments of the embedded replay source. The first two are the canary instruments.
DEFAULT_INSTRUMENTS: tuple[str, ...] = (
    "BTCUSDT",
    "ETHUSDT",
    "SOLUSDT",
    "BNBUSDT",
    "XRPUSDT",
    "ADAUSDT",
    "DOGEUSDT",
    "AVAXUSDT",
)
CANARY_INSTRUMENTS: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")

#: Feature columns produced by the dbt model ``bar_features`` (the model input, in order).
FEATURE_COLUMNS: tuple[str, ...] = (
    "ret_1",
    "ret_5",
    "ret_15",
    "ret_60",
    "rv_15",
    "rv_60",
    "rsi_14",
    "macd",
    "macd_signal",
    "macd_hist",
    "bb_pos_20",
    "volume_z_60",
    "range_hl",
    "range_co",
)


class SettingsError(ValueError):
    """Raised when the environment describes an impossible configuration."""


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _env_float(name: str, default: float) -> float:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not a number") from exc


def _env_cost(name: str, default: float) -> float:
    """A trading cost in basis points: finite and not negative (a negative fee pays the strategy
    for trading, NaN turns every PnL into NaN)."""
    value = _env_float(name, default)
    if not math.isfinite(value) or value < 0:
        raise SettingsError(f"{name}={_env(name)!r} must be a finite number of basis points >= 0")
    return value


def secret(name: str) -> str | None:
    """A credential (a broker key) from the environment, read when it is needed.

    Secrets are never fields of :class:`Settings`, so they cannot reach a repr, a log line or
    asset metadata; connectors call this instead of reading ``os.environ`` themselves.
    """
    return _env(name)


def _env_int(name: str, default: int) -> int:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not an integer") from exc


#: Session calendars defined by the project (``defs/market_data/calendars.py``); every other name
#: is a pandas-market-calendars calendar (exchange-calendars' names included).
BUILTIN_CALENDARS: tuple[str, ...] = ("crypto", "fx")
#: Currencies whose six-letter pairs (GBPUSD, USDJPY, ...) default to the ``fx`` calendar. Only
#: currencies: a crypto ticker such as BTC or SOL is not here, so BTCUSD stays 24/7.
FX_CURRENCIES = frozenset(
    "USD EUR GBP JPY CHF AUD NZD CAD SEK NOK DKK PLN HUF CZK TRY ZAR MXN SGD HKD CNH CNY ILS INR KRW THB RUB BRL".split()
)


def calendar_names() -> list[str]:
    """Every calendar name ``AUTOTRADER_CALENDARS`` accepts (imports the calendar library)."""
    import pandas_market_calendars as pmc  # lazy: only a configured mapping pays for pandas

    shadowed = {b.lower() for b in BUILTIN_CALENDARS}
    return [*BUILTIN_CALENDARS, *sorted(n for n in pmc.get_calendar_names() if n.lower() not in shadowed)]


def default_calendar(instrument: str) -> str:
    """``fx`` for a pair of two currencies of ``FX_CURRENCIES``, else ``crypto`` (24/7)."""
    i = instrument.upper()
    return "fx" if len(i) == 6 and i[:3] in FX_CURRENCIES and i[3:] in FX_CURRENCIES else "crypto"


def _parse_calendars(raw: str | None) -> tuple[tuple[str, str], ...]:
    """``AUTOTRADER_CALENDARS="GBPUSD=fx,ES=CME Globex Equity"`` -> ((instrument, calendar), ...)."""
    if not raw:
        return ()
    pairs: dict[str, str] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        instrument, sep, name = (x.strip() for x in item.partition("="))
        if not sep or not instrument or not name:
            raise SettingsError(f"AUTOTRADER_CALENDARS entry {item.strip()!r} is not INSTRUMENT=CALENDAR")
        if instrument.upper() in pairs:
            raise SettingsError(f"AUTOTRADER_CALENDARS maps {instrument.upper()} twice")
        pairs[instrument.upper()] = name.lower() if name.lower() in BUILTIN_CALENDARS else name
    valid = calendar_names()
    unknown = sorted({n for n in pairs.values() if n not in valid})
    if unknown:
        raise SettingsError(
            f"AUTOTRADER_CALENDARS names unknown calendar(s) {', '.join(unknown)}; valid: {', '.join(valid)}"
        )
    return tuple(pairs.items())


#: Names a file column mapping (AUTOTRADER_FILE_COLUMNS) may give a file's column.
FILE_COLUMN_NAMES: tuple[str, ...] = ("ts", "open", "high", "low", "close", "volume")
FILE_SOURCE_EXAMPLE = (
    'AUTOTRADER_INSTRUMENTS=GBPUSD,BTCUSDT AUTOTRADER_FILE_SOURCE="GBPUSD=../shared/data/fx_1m/GBPUSD_m1_ask_2012.csv,'
    'BTCUSDT=../shared/data/crypto_1m/BTCUSDT-PERP_1m_2021-12-31_2022-02-01.csv"'
)
FILE_SOURCE_HELP = (
    "set AUTOTRADER_FILE_SOURCE to one file (for one instrument) or to INSTRUMENT=FILE pairs, e.g. "
    f"{FILE_SOURCE_EXAMPLE}; or AUTOTRADER_FILE_DIR to a folder with one file per instrument "
    '(AUTOTRADER_FILE_PATTERN, default "{instrument}[._-]*", picks each instrument\'s file); add '
    "AUTOTRADER_FILE_SYMBOL_COLUMN when one file holds several instruments. "
    'See "Real data from files" in README.md'
)


@dataclass(frozen=True)
class FileSourceSettings:
    """Where the ``file`` market source reads bars (the ``AUTOTRADER_FILE_*`` variables)."""

    path: str | None = None  #: one file: AUTOTRADER_FILE_SOURCE=/data/gbpusd.csv
    paths: tuple[tuple[str, tuple[str, ...]], ...] = ()  #: AUTOTRADER_FILE_SOURCE="GBPUSD=a.csv,..." or JSON
    directory: str | None = None  #: AUTOTRADER_FILE_DIR
    pattern: str | None = None  #: AUTOTRADER_FILE_PATTERN (with ``{instrument}``)
    symbol_column: str | None = None  #: AUTOTRADER_FILE_SYMBOL_COLUMN
    columns: tuple[tuple[str, str], ...] = ()  #: AUTOTRADER_FILE_COLUMNS="ts=timestamp_utc,close=Close"

    @property
    def configured(self) -> bool:
        return bool(self.path or self.paths or self.directory)


def _pairs(name: str, raw: str) -> list[tuple[str, str]]:
    """``KEY=VALUE,KEY=VALUE`` -> pairs (values may be empty)."""
    out = []
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, value = (x.strip() for x in item.partition("="))
        if not sep or not key:
            raise SettingsError(f"{name} entry {item.strip()!r} is not KEY=VALUE")
        out.append((key, value))
    return out


def _json_object(name: str, raw: str) -> dict:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{name} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise SettingsError(f"{name} must be a JSON object, got {type(value).__name__}")
    return value


def _abs_path(path: str) -> str:
    # Relative paths are taken from the directory the command runs in, once, so that every run
    # of the code location reads the same files.
    return str(Path(path).expanduser().resolve())


def _parse_file_paths(raw: str) -> tuple[str | None, tuple[tuple[str, tuple[str, ...]], ...]]:
    """AUTOTRADER_FILE_SOURCE: one path, ``INSTRUMENT=PATH`` pairs, or a JSON object whose values
    are a path or a list of paths (consecutive parts of one series)."""
    name = "AUTOTRADER_FILE_SOURCE"
    text = raw.strip()
    if text.startswith("{"):
        mapping: dict[str, tuple[str, ...]] = {}
        for key, value in _json_object(name, text).items():
            files = [value] if isinstance(value, str) else value
            if not isinstance(files, list) or not files or not all(isinstance(f, str) and f for f in files):
                raise SettingsError(f"{name}: {key!r} must map to a file path or a non-empty list of paths")
            if key.strip().upper() in mapping:
                raise SettingsError(f"{name} maps {key.strip().upper()} twice")
            mapping[key.strip().upper()] = tuple(_abs_path(f) for f in files)
        return None, tuple(mapping.items())
    if "=" not in text:
        return _abs_path(text), ()
    mapping = {}
    for key, value in _pairs(name, text):
        if not value:
            raise SettingsError(f"{name}: no file given for {key}")
        if key.upper() in mapping:
            raise SettingsError(
                f"{name} maps {key.upper()} twice; to read several files for one instrument use JSON: "
                '{"' + key.upper() + '": ["part1.csv", "part2.csv"]}'
            )
        mapping[key.upper()] = (_abs_path(value),)
    return None, tuple(mapping.items())


def _parse_file_columns(raw: str | None) -> tuple[tuple[str, str], ...]:
    """AUTOTRADER_FILE_COLUMNS: ``ts=timestamp_utc,close=Close`` (or JSON); ``volume=`` means the
    files have no volume to read."""
    name = "AUTOTRADER_FILE_COLUMNS"
    if not raw:
        return ()
    pairs = list(_json_object(name, raw).items()) if raw.strip().startswith("{") else _pairs(name, raw)
    out: dict[str, str] = {}
    for key, value in pairs:
        key = str(key).strip().lower()
        if key not in FILE_COLUMN_NAMES:
            raise SettingsError(f"{name} maps {key!r}; it may only map {', '.join(FILE_COLUMN_NAMES)}")
        if not isinstance(value, str) or (not value.strip() and key != "volume"):
            raise SettingsError(f"{name}: {key} must name a column of the file (only volume may be empty)")
        if key in out:
            raise SettingsError(f"{name} maps {key} twice")
        out[key] = value.strip()
    return tuple(out.items())


def _file_source_settings(market_source: str, instruments: tuple[str, ...]) -> FileSourceSettings:
    raw_source = _env("AUTOTRADER_FILE_SOURCE")
    directory = _env("AUTOTRADER_FILE_DIR")
    pattern = _env("AUTOTRADER_FILE_PATTERN")
    symbol_column = _env("AUTOTRADER_FILE_SYMBOL_COLUMN")
    if raw_source and directory:
        raise SettingsError("set AUTOTRADER_FILE_SOURCE or AUTOTRADER_FILE_DIR, not both")
    if pattern and not directory:
        raise SettingsError("AUTOTRADER_FILE_PATTERN picks files in AUTOTRADER_FILE_DIR, which is not set")
    if pattern and "{instrument}" not in pattern:
        raise SettingsError(
            f'AUTOTRADER_FILE_PATTERN={pattern!r} must contain {{instrument}}, e.g. "{{instrument}}_*.csv"'
        )
    path, paths = _parse_file_paths(raw_source) if raw_source else (None, ())
    files = FileSourceSettings(
        path=path,
        paths=paths,
        directory=_abs_path(directory) if directory else None,
        pattern=pattern,
        symbol_column=symbol_column,
        columns=_parse_file_columns(_env("AUTOTRADER_FILE_COLUMNS")),
    )
    if market_source != "file":
        return files
    if not files.configured:
        raise SettingsError("AUTOTRADER_MARKET_SOURCE=file but no file is configured: " + FILE_SOURCE_HELP)
    if files.path and not symbol_column and len(instruments) > 1:
        raise SettingsError(
            f"AUTOTRADER_FILE_SOURCE is one file but {len(instruments)} instruments are configured "
            f"({', '.join(instruments)}): the same bars would be served to each. Give each instrument its file "
            '(AUTOTRADER_FILE_SOURCE="' + ",".join(f"{i}=/path/{i}.csv" for i in instruments) + '"), name the '
            "column that says which instrument a row belongs to (AUTOTRADER_FILE_SYMBOL_COLUMN), or configure "
            "one instrument (AUTOTRADER_INSTRUMENTS)"
        )
    unmapped = [i for i in instruments if paths and i not in dict(paths)]
    if unmapped:
        raise SettingsError(
            f"AUTOTRADER_FILE_SOURCE has no file for {', '.join(unmapped)}; add "
            + ",".join(f"{i}=/path/{i}.csv" for i in unmapped)
            + " or remove them from AUTOTRADER_INSTRUMENTS"
        )
    return files


@dataclass(frozen=True)
class SmtpSettings:
    """The mail relay the weekly performance report is sent through (AUTOTRADER_SMTP_*).

    The password is not a field (a secret never reaches a repr): :meth:`password` reads
    AUTOTRADER_SMTP_PASSWORD or the file AUTOTRADER_SMTP_PASSWORD_FILE names, when mail is sent."""

    host: str = ""  #: AUTOTRADER_SMTP_HOST; empty: the report is not mailed
    port: int = 587  #: AUTOTRADER_SMTP_PORT
    sender: str = ""  #: AUTOTRADER_SMTP_FROM
    recipients: tuple[str, ...] = ()  #: AUTOTRADER_REPORT_EMAIL_TO, comma-separated
    username: str = ""  #: AUTOTRADER_SMTP_USER; empty: no login
    starttls: bool = True  #: AUTOTRADER_SMTP_STARTTLS (0/false for a local relay)
    password_file: str = ""  #: AUTOTRADER_SMTP_PASSWORD_FILE

    @property
    def configured(self) -> bool:
        return bool(self.host and self.sender and self.recipients)

    def password(self) -> str | None:
        """The SMTP password from AUTOTRADER_SMTP_PASSWORD or its file (trailing newline dropped)."""
        if self.password_file:
            try:
                return Path(self.password_file).read_text().rstrip("\n")
            except OSError as exc:
                raise SettingsError(
                    f"AUTOTRADER_SMTP_PASSWORD_FILE={self.password_file!r} cannot be read: {exc}"
                ) from exc
        return secret("AUTOTRADER_SMTP_PASSWORD")


def _smtp_settings() -> SmtpSettings:
    host = (_env("AUTOTRADER_SMTP_HOST", "") or "").strip()
    recipients = tuple(r.strip() for r in (_env("AUTOTRADER_REPORT_EMAIL_TO", "") or "").split(",") if r.strip())
    sender = (_env("AUTOTRADER_SMTP_FROM", "") or "").strip()
    if host and not (sender and recipients):
        raise SettingsError("AUTOTRADER_SMTP_HOST is set: also set AUTOTRADER_SMTP_FROM and AUTOTRADER_REPORT_EMAIL_TO")
    starttls = (_env("AUTOTRADER_SMTP_STARTTLS", "1") or "1").strip().lower()
    if starttls not in ("1", "true", "yes", "0", "false", "no"):
        raise SettingsError(f"AUTOTRADER_SMTP_STARTTLS={starttls!r} must be 1/true/yes or 0/false/no")
    return SmtpSettings(
        host=host,
        port=_env_int("AUTOTRADER_SMTP_PORT", 587),
        sender=sender,
        recipients=recipients,
        username=(_env("AUTOTRADER_SMTP_USER", "") or "").strip(),
        starttls=starttls in ("1", "true", "yes"),
        password_file=(_env("AUTOTRADER_SMTP_PASSWORD_FILE", "") or "").strip(),
    )


def _alertmanager_url() -> str:
    raw = (_env("AUTOTRADER_ALERTMANAGER_URL", "") or "").strip().rstrip("/")
    if raw and not raw.startswith(("http://", "https://")):
        raise SettingsError(f"AUTOTRADER_ALERTMANAGER_URL={raw!r} must be an http:// or https:// URL")
    return raw


@dataclass(frozen=True)
class Thresholds:
    """Every operational threshold in one place; shown in check metadata."""

    # data quality
    max_missing_fraction: float = 0.05
    outlier_robust_z: float = 12.0
    # drift (PSI)
    psi_warn: float = 0.2
    psi_critical: float = 0.3
    # model health (model_health): mean of max(p, 1-p) over 2-hour windows, win rate over 4-hour windows
    min_confidence: float = 0.6
    min_win_rate: float = 0.5
    # Sharpe ratios: fewer returns than this and a Sharpe is shown as not meaningful (UI, CLI);
    # the promotion gate then passes with a warning, the rollout gate fails the stage
    # (docs/architecture.md, "The Sharpe gates").
    min_sharpe_returns: int = 30
    # promotion gates
    min_auc: float = 0.51
    min_sharpe_no_production: float = 0.0
    max_drawdown: float = 0.15
    # rollout gates
    max_error_rate: float = 0.01
    max_p99_latency_ms: float = 200.0
    max_sharpe_drop: float = 0.20
    # circuit breaker
    breaker_daily_loss: float = 0.05
    breaker_drawdown: float = 0.15


@dataclass(frozen=True)
class Settings:
    env: str
    home: Path
    dagster_home: Path
    warehouse_path: Path
    archive_uri: str
    artifacts_uri: str
    registry_url: str
    instruments: tuple[str, ...]
    canary_instruments: tuple[str, ...]
    replay_seed: int
    start_date: str
    market_source: str
    fee_bps: float
    slippage_bps: float
    stage_seconds: float
    serving_token: str | None
    thresholds: Thresholds = field(default_factory=Thresholds)
    aws_region: str = "us-east-1"
    #: The ECS deployment document of the production slot backend (AUTOTRADER_ECS_CONFIG: inline
    #: JSON or ``@/path/to/file.json``, the root Terraform module's ``ecs_config`` output); empty
    #: when unused. :func:`parse_ecs_config` reads it (``Settings.ecs()``).
    ecs_config: str = ""
    #: Seconds a warehouse writer or reader waits for DuckDB's file lock before failing with
    #: the holder's name (AUTOTRADER_WAREHOUSE_LOCK_TIMEOUT).
    warehouse_lock_timeout_s: float = 300.0
    #: Days `make run` materializes (AUTOTRADER_RUN_DAYS); None: the runner's default (the replay
    #: source's fixed demo window, 14 days back from yesterday for other sources).
    run_days: int | None = None
    #: Where the ``file`` market source reads (AUTOTRADER_FILE_*); empty for other sources.
    file_source: FileSourceSettings = field(default_factory=FileSourceSettings)
    #: (instrument, session calendar) pairs from AUTOTRADER_CALENDARS; see ``calendar_for``.
    calendars: tuple[tuple[str, str], ...] = ()
    #: Prometheus Pushgateway the batch jobs push their metrics to (AUTOTRADER_PUSHGATEWAY_URL,
    #: e.g. ``http://127.0.0.1:9091``); empty: nothing is pushed (``deploy_ops/metrics_push.py``).
    pushgateway_url: str = ""
    #: The file_sd targets file the local deployer rewrites on every slot change, so Prometheus
    #: scrapes exactly the running slots (AUTOTRADER_PROMETHEUS_TARGETS; default under the home).
    prometheus_targets_file: Path | None = None
    #: Alertmanager the platform's events are delivered to (AUTOTRADER_ALERTMANAGER_URL, e.g.
    #: ``http://127.0.0.1:9093``); empty: alerts wait in the outbox (``autotrader alerts list``).
    alertmanager_url: str = ""
    #: Prefix of every alert's runbook_url (AUTOTRADER_RUNBOOK_BASE_URL, e.g. the repository's web
    #: address ending in ``/blob/main/``); empty: the repository path ``docs/runbooks/...``.
    runbook_base_url: str = ""
    #: The relay the weekly performance report is mailed through (AUTOTRADER_SMTP_*).
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    #: Where ``autotrader backup`` and the ``hourly_backup`` schedule keep backups
    #: (AUTOTRADER_BACKUP_URI: a folder or ``s3://bucket/prefix``); local default: ``<home>/backups``,
    #: production: required by the backup commands, never defaulted to the task's own disk.
    backup_uri: str = ""
    #: S3 endpoint override for the archive and artifact stores (AUTOTRADER_S3_ENDPOINT_URL, else
    #: boto3's own AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL): a MinIO or moto server, a VPC endpoint
    #: URL; empty: AWS's regional endpoint.
    s3_endpoint_url: str = ""
    #: The shared file system (EFS) mount that holds the DuckDB warehouse in production
    #: (AUTOTRADER_WAREHOUSE_SHARED_DIR): every run is its own ECS task with its own disk, so the
    #: warehouse must live where the next run's task finds it. None in the local profile.
    warehouse_shared_dir: Path | None = None
    #: Where the values assets hand each other through Dagster's IO manager are pickled in production
    #: (AUTOTRADER_IO_URI, ``s3://bucket/prefix``; default ``<AUTOTRADER_ARTIFACTS_URI>/dagster-io``):
    #: ``training_dataset`` -> ``candidate_model`` -> ``registered_model`` may run in different ECS
    #: tasks, which share no disk. Empty in the local profile: Dagster's filesystem IO manager
    #: under ``DAGSTER_HOME/storage``.
    io_uri: str = ""

    def ecs(self) -> EcsConfig:
        """The parsed AUTOTRADER_ECS_CONFIG (:func:`parse_ecs_config`); SettingsError when unset or wrong."""
        return parse_ecs_config(self.ecs_config)

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def archive_is_s3(self) -> bool:
        return self.archive_uri.startswith("s3://")

    def calendar_for(self, instrument: str) -> str:
        """The session calendar of ``instrument``: its AUTOTRADER_CALENDARS entry, else ``fx`` for a
        six-letter currency pair (GBPUSD), else ``crypto`` (24/7, the replay instruments)."""
        return dict(self.calendars).get(instrument.upper()) or default_calendar(instrument)

    def ensure_dirs(self) -> None:
        """Create the local directories this profile writes to."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.dagster_home.mkdir(parents=True, exist_ok=True)
        self.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
        for uri in (self.archive_uri, self.artifacts_uri):
            if "://" not in uri:
                Path(uri).mkdir(parents=True, exist_ok=True)


def _s3_endpoint_url() -> str:
    # Our own name first; boto3's names are honoured too, so an operator who already set them
    # for the AWS CLI gets the same endpoint for the archive and the artifacts.
    for name in ("AUTOTRADER_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        raw = (_env(name, "") or "").strip().rstrip("/")
        if raw:
            if not raw.startswith(("http://", "https://")):
                raise SettingsError(f"{name}={raw!r} must be an http:// or https:// URL")
            return raw
    return ""


#: Schemes of a registry URL that several tasks on several hosts can share.
SHARED_DATABASE_SCHEMES = ("postgresql", "postgres")
#: The instance variables the shipped ``infra/dagster/dagster.yaml`` reads whose value may be empty:
#: a PostgreSQL role that authenticates without a password (IAM, trust, ``.pgpass``) still needs
#: the variable set, because Dagster fails on an unset ``env:`` reference, not on an empty one.
MAY_BE_EMPTY = frozenset({"DAGSTER_PG_PASSWORD"})


def _env_references(node) -> list[str]:
    """Every ``{env: NAME}`` a Dagster instance YAML reads, in document order."""
    if isinstance(node, dict):
        if set(node) == {"env"} and isinstance(node["env"], str):
            return [node["env"]]
        return [name for value in node.values() for name in _env_references(value)]
    if isinstance(node, list):
        return [name for value in node for name in _env_references(value)]
    return []


def _instance_problems(dagster_home: str | None) -> list[str]:
    """What keeps ``DAGSTER_HOME`` from being the shared production instance."""
    if not dagster_home:
        return [
            "DAGSTER_HOME is not set: runs and sensors would be recorded in a new SQLite instance on this "
            "disk that no production daemon sees; point it at the folder holding infra/dagster/dagster.yaml"
        ]
    config = Path(dagster_home).expanduser() / "dagster.yaml"
    if not config.is_file():
        return [f"{config} does not exist: copy infra/dagster/dagster.yaml there (the images do)"]
    import yaml  # lazy: only the production profile reads the instance file

    try:
        document = yaml.safe_load(config.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        return [f"{config} cannot be read as YAML: {exc}"]
    if not isinstance(document, dict):
        return [f"{config} is not a YAML mapping"]
    problems = []
    storage = document.get("storage")
    if not (isinstance(storage, dict) and "postgres" in storage):
        problems.append(
            f"{config} has no 'storage: postgres' section: the instance would keep runs in SQLite on this disk"
        )
    unset, empty = [], []
    for name in dict.fromkeys(_env_references(document)):
        value = os.environ.get(name)
        if value is None:
            unset.append(name)
        elif not value.strip() and name not in MAY_BE_EMPTY:
            empty.append(name)
    if unset:
        problems.append(
            f"{config} reads {', '.join(unset)}, which {'is' if len(unset) == 1 else 'are'} not set"
            + (" (DAGSTER_PG_PASSWORD may be empty, but must be set)" if "DAGSTER_PG_PASSWORD" in unset else "")
        )
    if empty:
        problems.append(f"{config} reads {', '.join(empty)}, which {'is' if len(empty) == 1 else 'are'} empty")
    return problems


def production_problems(
    *,
    registry_url: str,
    archive_uri: str,
    artifacts_uri: str,
    warehouse_path: Path,
    warehouse_shared_dir: Path | None,
    serving_token_set: bool,
    dagster_home: str | None,
    io_uri: str = "",
) -> list[str]:
    """Everything that keeps the production profile from running on tasks that share no disk.

    Every store must be one that the next ECS task (another run, the daemon, an operator's CLI)
    reaches too; a local store would pass silently and be wrong (a breaker that says "armed" while
    the shared one is tripped). All problems are listed at once, so one deploy fixes them all.
    """
    problems = []
    scheme = registry_url.split(":", 1)[0].split("+", 1)[0].lower() if registry_url else ""
    if not registry_url:
        problems.append(
            "AUTOTRADER_REGISTRY_URL is not set (the PostgreSQL URL of the registry, deployment state and breaker)"
        )
    elif scheme not in SHARED_DATABASE_SCHEMES:
        # Only the scheme is shown: the URL may carry a password.
        problems.append(
            f"AUTOTRADER_REGISTRY_URL is a {scheme or 'local'}: URL; production needs a shared "
            "PostgreSQL database (postgresql://...)"
        )
    for name, uri in (("AUTOTRADER_ARCHIVE_URI", archive_uri), ("AUTOTRADER_ARTIFACTS_URI", artifacts_uri)):
        if not uri:
            problems.append(f"{name} is not set (an s3://bucket/prefix URI)")
        elif not uri.startswith("s3://"):
            problems.append(f"{name}={uri!r} is on this task's disk; production needs an s3://bucket/prefix URI")
    if io_uri and not io_uri.startswith("s3://"):
        problems.append(
            f"AUTOTRADER_IO_URI={io_uri!r} is on this task's disk; the values runs hand each other need "
            "an s3://bucket/prefix URI (unset: under AUTOTRADER_ARTIFACTS_URI)"
        )
    if warehouse_shared_dir is None:
        problems.append(
            f"the warehouse {warehouse_path} is on this task's own disk: set AUTOTRADER_WAREHOUSE_SHARED_DIR "
            "to the shared file system (EFS) mount that holds it"
        )
    elif not warehouse_shared_dir.is_dir():
        problems.append(
            f"AUTOTRADER_WAREHOUSE_SHARED_DIR={str(warehouse_shared_dir)!r} is not a directory "
            "(is the EFS volume mounted?)"
        )
    elif not warehouse_path.is_relative_to(warehouse_shared_dir):
        problems.append(
            f"AUTOTRADER_WAREHOUSE={str(warehouse_path)!r} is outside AUTOTRADER_WAREHOUSE_SHARED_DIR="
            f"{str(warehouse_shared_dir)!r}; unset it (default: warehouse.duckdb in the shared folder)"
        )
    if not serving_token_set:
        problems.append(
            "AUTOTRADER_SERVING_TOKEN is not set: production slots refuse unauthenticated /predict, "
            "so paper trading and rollouts could not call them"
        )
    problems.extend(_instance_problems(dagster_home))
    return problems


def _pushgateway_url() -> str:
    raw = (_env("AUTOTRADER_PUSHGATEWAY_URL", "") or "").strip().rstrip("/")
    if raw and not raw.startswith(("http://", "https://")):
        raise SettingsError(f"AUTOTRADER_PUSHGATEWAY_URL={raw!r} must be an http:// or https:// URL")
    return raw


def load_settings() -> Settings:
    """Build settings from the environment (uncached; tests call this after monkeypatching)."""
    env = (_env("AUTOTRADER_ENV", "local") or "local").lower()
    if env not in ("local", "production"):
        raise SettingsError(f"AUTOTRADER_ENV must be 'local' or 'production', got {env!r}")
    home = Path(_env("AUTOTRADER_HOME", str(PROJECT_ROOT / ".autotrader"))).resolve()
    dagster_home = Path(_env("DAGSTER_HOME", str(home / "dagster_home"))).resolve()
    instruments_raw = _env("AUTOTRADER_INSTRUMENTS")
    instruments = (
        tuple(i.strip().upper() for i in instruments_raw.split(",") if i.strip())
        if instruments_raw
        else DEFAULT_INSTRUMENTS
    )
    if not instruments:
        raise SettingsError("AUTOTRADER_INSTRUMENTS is empty")
    canary = tuple(i for i in CANARY_INSTRUMENTS if i in instruments) or instruments[:1]

    shared_raw = _env("AUTOTRADER_WAREHOUSE_SHARED_DIR")
    warehouse_shared_dir = Path(shared_raw).expanduser().resolve() if shared_raw else None
    default_warehouse = (
        warehouse_shared_dir if env == "production" and warehouse_shared_dir else home
    ) / "warehouse.duckdb"
    warehouse_path = Path(_env("AUTOTRADER_WAREHOUSE", str(default_warehouse))).resolve()
    if env == "production":
        registry_url = _env("AUTOTRADER_REGISTRY_URL") or ""
        archive_uri = _env("AUTOTRADER_ARCHIVE_URI") or ""
        artifacts_uri = _env("AUTOTRADER_ARTIFACTS_URI") or ""
        io_uri = (
            _env("AUTOTRADER_IO_URI") or (f"{artifacts_uri.rstrip('/')}/dagster-io" if artifacts_uri else "")
        ).rstrip("/")
        problems = production_problems(
            registry_url=registry_url,
            archive_uri=archive_uri,
            artifacts_uri=artifacts_uri,
            warehouse_path=warehouse_path,
            warehouse_shared_dir=warehouse_shared_dir,
            serving_token_set=bool(_env("AUTOTRADER_SERVING_TOKEN")),
            dagster_home=_env("DAGSTER_HOME"),
            # Only an explicit one: the default follows AUTOTRADER_ARTIFACTS_URI, already judged above.
            io_uri=_env("AUTOTRADER_IO_URI") or "",
        )
        if problems:
            raise SettingsError(
                f"the production profile cannot start ({len(problems)} problem(s); see README.md, Configuration):\n"
                + "\n".join(f"  - {p}" for p in problems)
            )
    else:
        registry_url = _env("AUTOTRADER_REGISTRY_URL", f"sqlite:///{home / 'registry.db'}")
        archive_uri = _env("AUTOTRADER_ARCHIVE_URI", str(home / "archive"))
        artifacts_uri = _env("AUTOTRADER_ARTIFACTS_URI", str(home / "artifacts"))
        io_uri = ""

    market_source = (_env("AUTOTRADER_MARKET_SOURCE", "replay") or "replay").lower()
    return Settings(
        env=env,
        home=home,
        dagster_home=dagster_home,
        warehouse_path=warehouse_path,
        warehouse_shared_dir=warehouse_shared_dir,
        io_uri=io_uri,
        s3_endpoint_url=_s3_endpoint_url(),
        archive_uri=archive_uri,
        artifacts_uri=artifacts_uri,
        registry_url=registry_url,
        instruments=instruments,
        canary_instruments=canary,
        replay_seed=_env_int("AUTOTRADER_REPLAY_SEED", 7),
        start_date=_env("AUTOTRADER_START_DATE", "2017-01-01"),
        market_source=market_source,
        file_source=_file_source_settings(market_source, instruments),
        fee_bps=_env_cost("AUTOTRADER_FEE_BPS", 4.0),
        slippage_bps=_env_cost("AUTOTRADER_SLIPPAGE_BPS", 2.0),
        stage_seconds=_env_float("AUTOTRADER_STAGE_SECONDS", 2.0 if env == "local" else 600.0),
        serving_token=_env("AUTOTRADER_SERVING_TOKEN"),
        aws_region=_env("AWS_REGION", _env("AWS_DEFAULT_REGION", "us-east-1")) or "us-east-1",
        ecs_config=_env(ECS_CONFIG_ENV, "") or "",
        warehouse_lock_timeout_s=_env_float("AUTOTRADER_WAREHOUSE_LOCK_TIMEOUT", 300.0),
        run_days=None if _env("AUTOTRADER_RUN_DAYS") is None else _env_int("AUTOTRADER_RUN_DAYS", 0),
        calendars=_parse_calendars(_env("AUTOTRADER_CALENDARS")),
        alertmanager_url=_alertmanager_url(),
        runbook_base_url=(_env("AUTOTRADER_RUNBOOK_BASE_URL", "") or "").strip(),
        smtp=_smtp_settings(),
        pushgateway_url=_pushgateway_url(),
        backup_uri=(_env("AUTOTRADER_BACKUP_URI", "" if env == "production" else str(home / "backups")) or "").strip(),
        prometheus_targets_file=Path(
            _env("AUTOTRADER_PROMETHEUS_TARGETS", str(home / "monitoring" / "serving_targets.json"))
        ).resolve(),
    )


#: The serving deployer's ECS document, name for name the root Terraform module's ``ecs_config``
#: output (``terraform output -json ecs_config``; tests/unit/test_terraform.py holds them equal).
ECS_CONFIG_ENV = "AUTOTRADER_ECS_CONFIG"
ECS_CONFIG_SECTIONS = ("deployer", "endpoints")


def ecs_deployer_keys() -> tuple[str, ...]:
    """The keys of the document's ``deployer`` section: EcsDeployerConfig's fields, in order."""
    from dataclasses import fields

    from deploy_ops.slots.ecs.config import EcsDeployerConfig

    return tuple(f.name for f in fields(EcsDeployerConfig))


@dataclass(frozen=True)
class EcsConfig:
    """AUTOTRADER_ECS_CONFIG parsed: the deployer's settings and the URL each slot answers on."""

    deployer: dict
    endpoints: dict

    def deployer_config(self):
        """The EcsDeployerConfig of ``deployer`` (its own checks raise ValueError, named here)."""
        from deploy_ops.slots.ecs.config import EcsDeployerConfig

        try:
            return EcsDeployerConfig(**self.deployer)
        except ValueError as exc:
            raise SettingsError(f"{ECS_CONFIG_ENV} 'deployer': {exc}") from exc


def parse_ecs_config(text: str) -> EcsConfig:
    """AUTOTRADER_ECS_CONFIG: inline JSON or ``@path`` holding ``{"deployer": {...}, "endpoints":
    {"blue": url, "green": url}}``. Unknown or missing deployer keys are refused by name (a renamed
    Terraform output would otherwise fail later, inside the deployer, with a TypeError)."""
    from dataclasses import MISSING, fields

    from deploy_ops.slots.ecs.config import EcsDeployerConfig
    from deploy_ops.slots.names import SLOTS

    text = (text or "").strip()
    if not text:
        raise SettingsError(f"the ECS backend needs {ECS_CONFIG_ENV} (JSON with 'deployer' and 'endpoints')")
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise SettingsError(f"{ECS_CONFIG_ENV} names {path}, which cannot be read: {exc}") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{ECS_CONFIG_ENV} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict) or not all(isinstance(document.get(k), dict) for k in ECS_CONFIG_SECTIONS):
        raise SettingsError(f"{ECS_CONFIG_ENV} must be an object with 'deployer' and 'endpoints' objects")
    extra_sections = sorted(set(document) - set(ECS_CONFIG_SECTIONS))
    if extra_sections:
        raise SettingsError(
            f"{ECS_CONFIG_ENV} has unknown sections {extra_sections} (known: {list(ECS_CONFIG_SECTIONS)})"
        )
    deployer, endpoints = document["deployer"], document["endpoints"]
    known = ecs_deployer_keys()
    unknown = sorted(set(deployer) - set(known))
    required = [f.name for f in fields(EcsDeployerConfig) if f.default is MISSING and f.default_factory is MISSING]
    missing = [k for k in required if k not in deployer]
    if unknown or missing:
        raise SettingsError(
            f"{ECS_CONFIG_ENV} 'deployer' must hold EcsDeployerConfig's fields: "
            + "; ".join(
                part
                for part in (f"unknown {unknown}" if unknown else "", f"missing {missing}" if missing else "")
                if part
            )
        )
    bad_slots = sorted(set(endpoints) ^ set(SLOTS))
    if bad_slots or not all(isinstance(v, str) and v.startswith(("http://", "https://")) for v in endpoints.values()):
        raise SettingsError(
            f"{ECS_CONFIG_ENV} 'endpoints' must map exactly {list(SLOTS)} to http(s) URLs, got {endpoints!r}"
        )
    return EcsConfig(deployer=dict(deployer), endpoints=dict(endpoints))


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached). Call ``get_settings.cache_clear()`` after env changes."""
    return load_settings()
