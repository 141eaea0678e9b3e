"""The runbooks stay true: every command they tell an operator to type exists and takes the
options it is given.

Every fenced ``bash`` block of ``docs/runbooks/*.md``, ``README.md``, ``CONTRIBUTING.md`` and
``docs/architecture.md`` is read as a shell script
(line continuations joined, comments dropped, ``|``/``&&``/``;`` splitting a line into several
commands, heredocs collected as files). Then, per command:

* ``autotrader ...`` (or ``.venv/bin/autotrader ...``): the words before the first option plus
  ``--help`` must exit 0 through click's CliRunner (a renamed group or command fails here), every
  ``--option`` of the line must appear in that help text (a renamed option fails here), and the
  whole line must parse against the command (types, choices, required options) without running it.
* ``dagster job execute ... -j NAME``: the options exist in Dagster's CLI, NAME is a job of our
  Definitions, and a ``-c FILE`` written by a heredoc in the same runbook is valid run config for it.
* ``dg launch --assets A,B`` / ``--job NAME``, ``dagster asset materialize --select A,B``: the
  options exist, the assets or job exist, and a ``--partition-range`` names real partitions.

The map (``docs/architecture.md``) is held to the code the same way: it must name every asset,
check, job, sensor and schedule the Definitions hold.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import click
import dagster as dg
import pytest
import yaml
from click.testing import CliRunner

from autotrader_assets.cli import main

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK_DIR = ROOT / "docs" / "runbooks"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
#: The procedures the project promises a runbook for.
REQUIRED_RUNBOOKS = (
    "deploy-a-model.md",
    "rollback.md",
    "circuit-breaker.md",
    "data-restore.md",
    "serving-slots.md",
    "feature-drift.md",
    "system-outage.md",
    "disaster-recovery.md",
    "fire-drill.md",
)
DEFINITIONS_MODULE = "autotrader_assets.definitions"

# Fenced blocks, also indented ones (inside list items): group 1 is the indent, 2 the language.
_FENCE = re.compile(r"^([ \t]*)```([\w+-]*)[^\n]*\n(.*?)^\1```[ \t]*$", re.MULTILINE | re.DOTALL)
_HEREDOC = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")
_OPERATORS = {"|", "||", "&&", ";", "&"}
_ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_REDIRECT = re.compile(r"[<>&]*[<>][<>&]*")


# ------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Command:
    """One command of a runbook: its words (program first) and where it came from."""

    doc: str
    line: int
    words: tuple[str, ...]
    #: Variables the block ``export``s before this command (a block's own configuration).
    env: tuple[tuple[str, str], ...] = ()

    @property
    def program(self) -> str:
        return Path(self.words[0]).name

    @property
    def text(self) -> str:
        return shlex.join(self.words)

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


@dataclass
class Script:
    """The commands of one document's bash blocks, and the files its heredocs write."""

    doc: str
    commands: list[Command] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    #: What would not work when pasted into a shell (e.g. a heredoc that never ends).
    problems: list[str] = field(default_factory=list)


def _split_commands(line: str) -> list[list[str]]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in _OPERATORS:
            commands.append([])
        else:
            commands[-1].append(token)
    out = []
    for words in commands:
        cleaned: list[str] = []
        skip = False
        for w in words:
            if skip:
                skip = False
            elif _REDIRECT.fullmatch(w):
                skip = True  # a redirection and its target are not words of the command
            else:
                cleaned.append(w)
        while cleaned and _ENV_ASSIGNMENT.match(cleaned[0]):
            cleaned.pop(0)  # VAR=value before a command
        if cleaned:
            out.append(cleaned)
    return out


def parse_script(doc: str, text: str) -> Script:
    """Commands and heredoc files of every fenced ``bash`` block of a markdown document."""
    script = Script(doc)
    for match in _FENCE.finditer(text):
        if match.group(2).lower() not in ("bash", "sh", "shell"):
            continue
        first_line = text.count("\n", 0, match.start(3)) + 1
        indent = len(match.group(1))
        lines = [line[indent:] if line[:indent].strip() == "" else line for line in match.group(3).splitlines()]
        exported: dict[str, str] = {}
        i = 0
        while i < len(lines):
            start = i
            line = lines[i]
            while line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i].strip()
            i += 1
            heredoc = _HEREDOC.search(line)
            if heredoc:
                delimiter = heredoc.group(2)
                body = []
                # The shell ends a heredoc only at a line that is exactly the delimiter.
                while i < len(lines) and lines[i] != delimiter:
                    body.append(lines[i])
                    i += 1
                if i == len(lines):
                    script.problems.append(f"{doc}:{first_line + start}: heredoc never ends with a line {delimiter!r}")
                i += 1
                line = line[: heredoc.start()] + line[heredoc.end() :]
                target = re.search(r">\s*(\S+)", line)
                if target:
                    script.files[target.group(1)] = "\n".join(body) + "\n"
            for words in _split_commands(line):
                if words[0] == "export":
                    exported.update(w.split("=", 1) for w in words[1:] if "=" in w)
                script.commands.append(Command(doc, first_line + start, tuple(words), tuple(exported.items())))
    return script


def _documents() -> list[Path]:
    others = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ARCHITECTURE]
    return sorted(RUNBOOK_DIR.glob("*.md")) + [p for p in others if p.exists()]


SCRIPTS = [parse_script(p.relative_to(ROOT).as_posix(), p.read_text()) for p in _documents()]
FILES_BY_DOC = {s.doc: s.files for s in SCRIPTS}


def _commands(program: str, *subcommand: str) -> list[Command]:
    return [
        c
        for s in SCRIPTS
        for c in s.commands
        if c.program == program and tuple(c.words[1 : 1 + len(subcommand)]) == subcommand
    ]


AUTOTRADER = _commands("autotrader")
DAGSTER_JOB_EXECUTE = _commands("dagster", "job", "execute")
DAGSTER_ASSET_MATERIALIZE = _commands("dagster", "asset", "materialize")
DG_LAUNCH = _commands("dg", "launch")


def _ids(commands: list[Command]) -> list[str]:
    return [f"{c.doc}:{c.line}" for c in commands]


def _option_names(words: tuple[str, ...] | list[str]) -> list[str]:
    """The option names a command line uses (``--x=1`` -> ``--x``; short flags included)."""
    names = []
    for w in words:
        if w == "--":
            break
        if re.fullmatch(r"--[A-Za-z0-9][\w-]*(=.*)?", w) or re.fullmatch(r"-[A-Za-z]", w):
            names.append(w.split("=", 1)[0])
    return names


def _option_value(words: tuple[str, ...], *names: str) -> str | None:
    for i, w in enumerate(words):
        for name in names:
            if w == name and i + 1 < len(words):
                return words[i + 1]
            if w.startswith(name + "="):
                return w.split("=", 1)[1]
    return None


# ------------------------------------------------------------------------- the documents exist


def test_every_promised_runbook_exists_and_has_commands():
    problems = [p for s in SCRIPTS for p in s.problems]
    assert not problems, "\n".join(problems)
    present = {p.name for p in RUNBOOK_DIR.glob("*.md")}
    assert set(REQUIRED_RUNBOOKS) <= present, f"missing runbooks: {sorted(set(REQUIRED_RUNBOOKS) - present)}"
    for script in SCRIPTS:
        if script.doc.startswith("docs/runbooks/"):
            checked = [c for c in script.commands if c.program in ("autotrader", "dagster", "dg")]
            assert checked, f"{script.doc} has no autotrader/dagster/dg command in a ```bash block"


def test_the_parser_reads_continuations_operators_and_heredocs():
    script = parse_script(
        "x.md",
        "```bash\n"
        "# a comment\n"
        "AUTOTRADER_HOME=/tmp/h .venv/bin/autotrader deploy status --json | jq . && autotrader breaker status\n"
        "cat > cfg.yaml <<'EOF'\n"
        "ops: {}\n"
        "EOF\n"
        ".venv/bin/dagster job execute -m m \\\n"
        "    -j model_rollback -c cfg.yaml   # trailing comment\n"
        "```\n"
        "```python\nautotrader not a shell line\n```\n",
    )
    assert [c.words for c in script.commands] == [
        (".venv/bin/autotrader", "deploy", "status", "--json"),
        ("jq", "."),
        ("autotrader", "breaker", "status"),
        ("cat",),
        (".venv/bin/dagster", "job", "execute", "-m", "m", "-j", "model_rollback", "-c", "cfg.yaml"),
    ]
    assert script.files == {"cfg.yaml": "ops: {}\n"}
    assert [c.line for c in script.commands] == [3, 3, 3, 4, 7]
    assert script.problems == []

    nested = parse_script(
        "y.md", "- a step:\n\n  ```bash\n  autotrader deploy status\n  cat > a.yaml <<'EOF'\n  x: 1\n    EOF\n  ```\n"
    )
    assert [c.words for c in nested.commands] == [("autotrader", "deploy", "status"), ("cat",)]
    assert nested.problems == ["y.md:5: heredoc never ends with a line 'EOF'"]


def test_the_runbooks_use_the_cli():
    # Guards the parser itself: if it silently found nothing, every other test would pass.
    assert len(AUTOTRADER) >= 20
    used = {tuple(c.words[1:3]) for c in AUTOTRADER}
    for path in [
        ("deploy", "rollout"),
        ("deploy", "rollback"),
        ("deploy", "emergency-rollback"),
        ("deploy", "status"),
        ("deploy", "switch-traffic"),
        ("deploy", "stop"),
        ("registry", "list"),
        ("registry", "rollback"),
        ("breaker", "status"),
        ("breaker", "reset"),
        ("breaker", "history"),
        ("data", "validate"),
        ("data", "restore"),
    ]:
        assert path in used, f"no runbook shows `autotrader {' '.join(path)}`"
    assert {_option_value(c.words, "-j", "--job") for c in DAGSTER_JOB_EXECUTE} >= {
        "model_rollback",
        "emergency_rollback",
    }
    assert DG_LAUNCH


# ----------------------------------------------------------------------------- autotrader CLI


def _command_path(words: tuple[str, ...]) -> list[str]:
    """The words after the program and before the first option: groups, command, arguments."""
    path = []
    for w in words[1:]:
        if w.startswith("-"):
            break
        path.append(w)
    return path


def _resolve(path: list[str]) -> tuple[click.Command, list[str], list[str]]:
    """The click command a path names, the names leading to it and the remaining (argument) words."""
    cmd: click.Command = main
    names: list[str] = []
    rest = list(path)
    while rest and isinstance(cmd, click.Group):
        sub = cmd.get_command(click.Context(cmd), rest[0])
        if sub is None:
            break
        names.append(rest.pop(0))
        cmd = sub
    return cmd, names, rest


@pytest.mark.parametrize("command", AUTOTRADER, ids=_ids(AUTOTRADER))
def test_autotrader_command_exists_and_takes_its_options(command: Command):
    path = _command_path(command.words)
    result = CliRunner().invoke(main, [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0, f"{command}\n`autotrader {' '.join(path)} --help` failed:\n{result.output}"
    help_text = result.output
    for option in _option_names(command.words):
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_text), (
            f"{command}\n`autotrader {' '.join(path)}` does not take {option}; its help:\n{help_text}"
        )

    cmd, names, _ = _resolve(path)
    assert not isinstance(cmd, click.Group) or "--help" in command.words or "--version" in command.words, (
        f"{command}\n`autotrader {' '.join(names)}` is a group: the runbook names no command of it"
    )
    if isinstance(cmd, click.Group):
        return
    # The whole line must parse (argument types, choices, required options, callbacks) -- without
    # running it. --help would exit during parsing, so it is left out here.
    args = [w for w in command.words[1 + len(names) :] if w not in ("--help", "-h")]
    try:
        ctx = cmd.make_context(f"autotrader {' '.join(names)}", args)
    except click.exceptions.Exit:
        return
    except click.ClickException as exc:
        pytest.fail(f"{command}\nis rejected by `autotrader {' '.join(names)}`: {exc.format_message()}")
    ctx.close()


def test_the_check_catches_a_renamed_command_and_option():
    """The checks above fail on lines naming a command or an option the CLI does not have."""
    unknown_command = ("autotrader", "deploy", "no-such-command", "3")
    result = CliRunner().invoke(main, [*_command_path(unknown_command), "--help"])
    assert result.exit_code != 0

    unknown_option = ("autotrader", "breaker", "reset", "--no-such-option", "ann", "--reason", "ok")
    help_text = CliRunner().invoke(main, [*_command_path(unknown_option), "--help"]).output
    assert "--reason" in help_text
    assert not re.search(r"(?<![\w-])--no-such-option(?![\w-])", help_text)


# ---------------------------------------------------------------------------- Dagster commands


@pytest.fixture(scope="module")
def defs():
    from autotrader_assets.definitions import defs as definitions

    return definitions


@pytest.fixture(scope="module")
def repo(defs):
    return defs.get_repository_def()


def _click_options(cli: click.Group, *path: str) -> set[str]:
    cmd: click.Command = cli
    for name in path:
        assert isinstance(cmd, click.Group), f"{' '.join(path)}: {name} is not reachable"
        sub = cmd.get_command(click.Context(cmd), name)
        assert sub is not None, f"the CLI has no `{' '.join(path)}`"
        cmd = sub
    return {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)} | {"--help"}


def _dagster_cli() -> click.Group:
    from dagster._cli import cli

    return cli


def _dg_cli() -> click.Group:
    from dagster_dg_cli.cli import cli

    return cli


def _job_names(repo) -> set[str]:
    return {j.name for j in repo.get_all_jobs()}


def _asset_names(repo) -> set[str]:
    return {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}


def _exported_market_partitions(command: Command) -> dg.MultiPartitionsDefinition | None:
    """The date x instrument partitions of the settings a block exports (e.g. the README's
    real-data example sets its own instruments and start date), or None if it sets neither.
    Loading those settings also checks that the block's configuration is valid."""
    import os
    from unittest import mock

    from autotrader_assets.settings import load_settings

    env = dict(command.env)
    if not {"AUTOTRADER_INSTRUMENTS", "AUTOTRADER_START_DATE"} & env.keys():
        return None
    with mock.patch.dict(os.environ, env):
        settings = load_settings()
    return dg.MultiPartitionsDefinition(
        {
            "date": dg.DailyPartitionsDefinition(start_date=settings.start_date, timezone="UTC"),
            "instrument": dg.StaticPartitionsDefinition(list(settings.instruments)),
        }
    )


def _check_partition_range(repo, assets: list[str], partition_range: str, command: Command) -> None:
    ends = partition_range.split("...")
    assert len(ends) == 2, f"{command}\n--partition-range must be START...END"
    exported = _exported_market_partitions(command)
    for asset in assets:
        partitions_def = repo.asset_graph.get(dg.AssetKey(asset)).partitions_def
        assert partitions_def is not None, f"{command}\n{asset} is not partitioned"
        if exported is not None and isinstance(partitions_def, dg.MultiPartitionsDefinition):
            partitions_def = exported
        for key in ends:
            assert partitions_def.has_partition_key(key), f"{command}\n{key!r} is not a partition of {asset}"


@pytest.mark.parametrize("command", DAGSTER_JOB_EXECUTE, ids=_ids(DAGSTER_JOB_EXECUTE))
def test_dagster_job_execute_names_a_real_job(command: Command, defs, repo):
    options = _click_options(_dagster_cli(), "job", "execute")
    for option in _option_names(command.words):
        assert option in options, f"{command}\n`dagster job execute` has no {option}"
    assert _option_value(command.words, "-m", "--module-name") == DEFINITIONS_MODULE, (
        f"{command}\nthe code location is -m {DEFINITIONS_MODULE}"
    )
    job = _option_value(command.words, "-j", "--job")
    assert job in _job_names(repo), f"{command}\nno job {job!r}; jobs: {sorted(_job_names(repo))}"
    config_file = _option_value(command.words, "-c", "--config")
    if config_file is not None:
        files = FILES_BY_DOC[command.doc]
        assert config_file in files, f"{command}\n{config_file} is not written by a heredoc in {command.doc}"
        run_config = yaml.safe_load(files[config_file])
        dg.validate_run_config(defs.resolve_job_def(job), run_config)


@pytest.mark.parametrize("command", DG_LAUNCH, ids=_ids(DG_LAUNCH))
def test_dg_launch_names_real_assets_or_jobs(command: Command, defs, repo):
    options = _click_options(_dg_cli(), "launch")
    for option in _option_names(command.words):
        assert option in options, f"{command}\n`dg launch` has no {option}"
    assets = _option_value(command.words, "--assets")
    job = _option_value(command.words, "--job")
    assert (assets is None) != (job is None), f"{command}\ndg launch takes --assets or --job"
    partition_range = _option_value(command.words, "--partition-range")
    if assets is not None:
        names = [a.strip() for a in assets.split(",")]
        unknown = sorted(set(names) - _asset_names(repo))
        assert not unknown, f"{command}\nno asset(s) {unknown}"
        if partition_range:
            _check_partition_range(repo, names, partition_range, command)
    else:
        assert job in _job_names(repo), f"{command}\nno job {job!r}"
        if partition_range:
            job_def = defs.resolve_job_def(job)
            for key in partition_range.split("..."):
                assert job_def.partitions_def.has_partition_key(key), f"{command}\n{key!r} is not a partition of {job}"
    config_file = _option_value(command.words, "-c", "--config")
    if config_file is not None and job is not None:
        dg.validate_run_config(defs.resolve_job_def(job), yaml.safe_load(FILES_BY_DOC[command.doc][config_file]))


@pytest.mark.parametrize("command", DAGSTER_ASSET_MATERIALIZE, ids=_ids(DAGSTER_ASSET_MATERIALIZE))
def test_dagster_asset_materialize_names_real_assets(command: Command, repo):
    options = _click_options(_dagster_cli(), "asset", "materialize")
    for option in _option_names(command.words):
        assert option in options, f"{command}\n`dagster asset materialize` has no {option}"
    names = [a.strip() for a in (_option_value(command.words, "--select") or "").split(",")]
    unknown = sorted(set(names) - _asset_names(repo))
    assert not unknown, f"{command}\nno asset(s) {unknown}"
    partition_range = _option_value(command.words, "--partition-range")
    if partition_range:
        _check_partition_range(repo, names, partition_range, command)


# ---------------------------------------------------------------------------------- the map


def test_architecture_names_every_definition(repo):
    """docs/architecture.md names every asset, check, job, sensor and schedule (in backticks)."""
    text = ARCHITECTURE.read_text()
    named = set(re.findall(r"`([^`\s]+)`", text))
    expected = {
        "asset": _asset_names(repo),
        "check": {k.name for k in repo.asset_graph.asset_check_keys},
        "job": {j for j in _job_names(repo) if not j.startswith("__")},
        "sensor": {s.name for s in repo.sensor_defs},
        "schedule": {s.name for s in repo.schedule_defs},
    }
    missing = {kind: sorted(names - named) for kind, names in expected.items() if names - named}
    assert not missing, f"docs/architecture.md does not name (in `backticks`): {missing}"
