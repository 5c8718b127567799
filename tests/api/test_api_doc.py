"""docs/API.md stays true: its examples are replayed, its tables regenerated and compared.

Every ``sh`` block of the page is run in order, as a reader would paste it into a shell:

- ``curl`` goes through Flask's test client (``$API`` is the application itself);
- ``coalition`` goes through the command line (click's runner) on the application's database;
- ``VAR=$(… | jq -r .path)`` and ``VAR=$(coalition …)`` set ``$VAR`` for the later steps, a
  ``<<EOF`` here-document is the request body (with ``$VAR`` expanded), ``> file`` writes the
  output into the test's working directory; ``coalition serve`` is skipped (the test client is
  the server), ``export`` names variables every later step sees anyway.

A block followed by an ``http`` block must get that status, the headers shown and the JSON fields
shown (a subset of the real body; ``…`` inside a string matches anything). A block followed by a
``text`` block must print those lines, in that order. ``python`` blocks run as they are, in the
same working directory, with the variables in the environment. Anything else in an ``sh`` block
fails the test, so the page cannot grow an example nobody checks.

The permission matrix (§3) must equal what :func:`permission_table` generates from
``api.auth.PERMISSIONS`` and the routes; ``python -m tests.api.test_api_doc --write`` rewrites it.
Each problem type of §6 must be one the code can answer with, at that status.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

DOC = Path(__file__).resolve().parents[2] / "docs" / "API.md"
BASE = "http://127.0.0.1:8000"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```[ \t]*$", re.M | re.S)
ROLE_COLUMNS = ("partner", "finance", "auditor", "admin", "privacy")


# -- reading the page ------------------------------------------------------------------------------


@dataclass
class Block:
    """One fenced block of the page and the ``http``/``text`` block that shows its outcome."""

    lang: str
    text: str
    response: str | None = None
    output: str | None = None


def blocks(doc: str) -> list[Block]:
    """The page's ``sh`` and ``python`` blocks, each with the outcome block shown after it.

    An ``http`` block is a command's response if it follows that command's block in the same
    section (no heading between) and starts with a status line; a ``text`` block is its output
    if it follows it the same way. Other ``http`` and ``text`` blocks (a request's headers, a
    signature base) are illustrations, not outcomes.
    """
    found: list[Block] = []
    previous: Block | None = None
    end = 0
    for match in FENCE.finditer(doc):
        lang, text = match.group(1), match.group(2)
        same_section = previous is not None and not re.search(r"^#", doc[end:match.start()], re.M)
        end = match.end()
        if (lang == "http" and same_section and previous is not None and previous.lang == "sh"
                and text.startswith("HTTP/") and previous.response is None):
            previous.response = text
        elif lang == "text" and same_section and previous is not None and previous.output is None:
            previous.output = text
        elif lang in ("sh", "python"):
            previous = Block(lang, text)
            found.append(previous)
            continue
        previous = None
    return found


@dataclass
class Command:
    """One shell command of a block, as the page writes it."""

    words: list[str]
    assign: str | None = None
    """``VAR`` of ``VAR=$(…)``."""
    jq: str | None = None
    """The path of a trailing ``| jq -r .path``."""
    stdin: str | None = None
    """A here-document's text."""
    redirect: str | None = None
    """The file of ``> file``."""
    background: bool = False


def commands(text: str, variables: dict[str, str]) -> Iterator[Command]:
    """The commands of an ``sh`` block, with ``$VAR`` expanded from ``variables`` as they run.

    A generator: each command is expanded only when the previous ones have run, so a variable a
    command sets is seen by the next.
    """
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\"):
            line = line[:-1].rstrip() + " " + lines[i].strip()
            i += 1
        stdin = None
        heredoc = re.search(r"<<'?(\w+)'?", line)
        if heredoc:
            body = []
            while lines[i] != heredoc.group(1):
                body.append(lines[i])
                i += 1
            i += 1
            stdin = "\n".join(body)
            line = line[: heredoc.start()] + line[heredoc.end():]
        assign = None
        assignment = re.match(r"^(\w+)=\$\((.*)$", line)
        if assignment:
            assign, line = assignment.group(1), assignment.group(2).rstrip()
            if line.endswith(")"):
                line = line[:-1]
            else:
                assert lines[i].strip() == ")", f"unclosed $( in: {line}"
                i += 1
        yield _command(line, assign, stdin, variables)


def _command(line: str, assign: str | None, stdin: str | None,
             variables: dict[str, str]) -> Command:
    command = Command([], assign=assign)
    line = line.strip()
    if line.endswith("&"):
        command.background, line = True, line[:-1].strip()
    piped = re.search(r"\|\s*jq -r\s+(\S+)\s*$", line)
    if piped:
        command.jq, line = piped.group(1), line[: piped.start()]
    redirected = re.search(r">\s*(\S+)\s*$", line)
    if redirected and not line.rstrip().endswith("'"):
        command.redirect, line = redirected.group(1), line[: redirected.start()]
    command.words = shlex.split(_expand(line, variables))
    command.stdin = None if stdin is None else _expand(stdin, variables)
    return command


def _expand(text: str, variables: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in variables, f"${name} is used before the page sets it"
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, text)


# -- comparing with what the page shows ------------------------------------------------------------


def _pattern(text: str) -> re.Pattern[str]:
    """``…`` matches anything; everything else literally."""
    return re.compile(".*".join(re.escape(part) for part in text.split("…")), re.S)


def _matches(shown: Any, actual: Any, where: str) -> None:
    if isinstance(shown, dict):
        assert isinstance(actual, dict), f"{where}: {actual!r} is not an object"
        for key, value in shown.items():
            assert key in actual, f"{where}: no {key!r} in {sorted(actual)}"
            _matches(value, actual[key], f"{where}.{key}")
    elif isinstance(shown, list):
        assert isinstance(actual, list), f"{where}: {actual!r} is not a list"
        assert len(shown) == len(actual), f"{where}: {len(actual)} items, the page shows {shown}"
        for index, (one, other) in enumerate(zip(shown, actual, strict=True)):
            _matches(one, other, f"{where}[{index}]")
    elif isinstance(shown, str) and "…" in shown:
        assert isinstance(actual, str), f"{where}: {actual!r}"
        assert _pattern(shown).fullmatch(actual), f"{where}: {actual!r} is not {shown!r}"
    else:
        assert shown == actual, f"{where}: the page shows {shown!r}, the API says {actual!r}"


def check_response(shown: str, response: Any, step: str) -> None:
    """The status, the headers and the JSON fields an ``http`` block shows."""
    head, _, body = shown.strip().partition("\n\n")
    status_line, *header_lines = head.splitlines()
    status = int(status_line.split()[1])
    assert response.status_code == status, f"{step}: {response.get_data(as_text=True)}"
    for header in header_lines:
        name, _, value = header.partition(":")
        actual = response.headers.get(name.strip())
        assert actual is not None, f"{step}: no {name} header"
        assert _pattern(value.strip()).fullmatch(actual), f"{step}: {name}: {actual}"
    if body.strip():
        _matches(json.loads(body), response.get_json(), step)


def check_output(shown: str, printed: str, step: str) -> None:
    """Each line a ``text`` block shows is printed, in that order (others may come between)."""
    lines = iter(printed.splitlines())
    for expected in shown.strip().splitlines():
        pattern = _pattern(expected)
        assert any(pattern.fullmatch(line) for line in lines), (
            f"{step}: {expected!r} not printed in order:\n{printed}")


def _jq(value: Any, path: str) -> str:
    for part in path.strip(".").split("."):
        value = value[part]
    return value if isinstance(value, str) else json.dumps(value)


# -- running the page ------------------------------------------------------------------------------


@dataclass
class Session:
    """What the page's shell would hold: the variables, the files, the server and the CLI."""

    client: FlaskClient
    cli: CliRunner
    cwd: Path
    variables: dict[str, str] = field(default_factory=dict)

    def run(self, block: Block) -> None:
        if block.lang == "python":
            self.run_python(block)
            return
        last: Any = None
        for command in commands(block.text, self.variables):
            last = self.run_command(command)
        step = block.text.strip().splitlines()[0]
        if block.response is not None:
            assert last is not None, f"{step}: not an HTTP call"
            assert not isinstance(last, str), f"{step}: not an HTTP call"
            check_response(block.response, last, step)
        if block.output is not None:
            assert isinstance(last, str), f"{step}: prints nothing to compare"
            check_output(block.output, last, step)

    def run_command(self, command: Command) -> Any:
        program, *args = command.words
        if program == "export":
            for arg in args:
                name, eq, value = arg.partition("=")
                if eq:
                    self.variables[name] = value
            return None
        if program == "curl":
            response = self.curl(args, command.stdin)
            assert response.status_code < 400 or command.assign is None, response.get_json()
            output: Any = response.get_data(as_text=True)
            result: Any = response
        elif program == "coalition":
            if args[0] == "serve":
                assert command.background, "coalition serve runs in the background here"
                return None
            output = result = self.coalition(args)
        else:
            raise AssertionError(f"the page runs {program!r}, which this test cannot check")
        if command.redirect:
            (self.cwd / command.redirect).write_text(output)
        if command.assign:
            text = _jq(json.loads(output), command.jq) if command.jq else output.strip()
            assert text not in ("", "null") or command.jq == ".next_cursor", command.words
            self.variables[command.assign] = text
        return result

    def curl(self, args: list[str], stdin: str | None) -> Any:
        method, headers, data, url = None, {}, None, None
        words = iter(args)
        for word in words:
            if word in ("-s", "-i"):
                continue
            if word == "-X":
                method = next(words)
            elif word == "-H":
                name, _, value = next(words).partition(":")
                headers[name.strip()] = value.strip()
            elif word == "-d":
                data = next(words)
                data = stdin if data == "@-" else data
            elif word.startswith(BASE):
                url = word.removeprefix(BASE)
            else:
                raise AssertionError(f"curl option {word!r} is not understood by this test")
        assert url is not None, args
        method = method or ("POST" if data is not None else "GET")
        return self.client.open(url, method=method, headers=headers, data=data)

    def coalition(self, args: list[str]) -> str:
        from api.cli import main

        result = self.cli.invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 0, f"coalition {' '.join(args)}:\n{result.output}"
        return result.stdout

    def run_python(self, block: Block) -> None:
        import contextlib
        import io
        import os

        printed = io.StringIO()
        saved = dict(os.environ)
        os.environ.update(self.variables)
        try:
            with contextlib.redirect_stdout(printed):
                exec(compile(block.text, str(DOC), "exec"), {"__name__": "__api_doc__"})
        finally:
            os.environ.clear()
            os.environ.update(saved)
        if block.output is not None:
            check_output(block.output, printed.getvalue(), "python block")


@pytest.fixture
def session(
    app: Flask, client: FlaskClient, database_url: str, log_signer: Any, master_key: Any,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Session]:
    """The page's shell: the CLI on the application's database and keys, in an empty directory."""
    import api.cli
    from api.config import format_master_key

    monkeypatch.chdir(tmp_path)
    opened: list[Any] = []
    open_database = api.cli._database

    def tracked(settings: Any) -> Any:
        opened.append(open_database(settings))
        return opened[-1]

    monkeypatch.setattr(api.cli, "_database", tracked)
    runner = CliRunner(env={
        "COALITION_DATABASE_URL": database_url,
        "COALITION_LOG_KEY": log_signer.skey,
        "COALITION_MASTER_KEY": format_master_key(master_key),
    })
    yield Session(client, runner, tmp_path)
    for database in opened:
        database.dispose()


def test_every_example_of_the_page_works_in_order(session: Session) -> None:
    """Replay docs/API.md: each command succeeds and answers what the page shows."""
    page = blocks(DOC.read_text())
    assert sum(block.response is not None for block in page) >= 20
    for block in page:
        session.run(block)
    assert {"ADMIN_TOKEN", "SHOP_TOKEN", "RAIL_TOKEN", "MEMBER", "BURN", "HOLD",
            "VKEY"} <= session.variables.keys()


# -- the tables ------------------------------------------------------------------------------------


def permission_table() -> str:
    """§3's table: each operation, its routes, and the roles that may perform it."""
    from api.auth import PERMISSIONS
    from partners.directory import Role
    from tests.api.test_authorization import V1_ROUTES

    routes: dict[str, list[str]] = {}
    for route in V1_ROUTES:
        routes.setdefault(route.operation or "", []).append(
            f"`{route.method} {route.openapi_path}`")
    rows = [
        "| operation | routes | " + " | ".join(ROLE_COLUMNS) + " |",
        "| --- | --- | " + " | ".join(":-:" for _ in ROLE_COLUMNS) + " |",
    ]
    for operation, allowed in PERMISSIONS.items():
        marks = " | ".join("✓" if Role(role) in allowed else "–" for role in ROLE_COLUMNS)
        rows.append(f"| `{operation}` | {'<br>'.join(routes.get(operation, []))} | {marks} |")
    return "\n".join(rows)


def _section(doc: str, name: str) -> str:
    found = re.search(rf"<!-- {name}:start -->\n(.*?)<!-- {name}:end -->", doc, re.S)
    assert found, f"no {name} section in {DOC}"
    return found.group(1).strip()


def test_the_permission_table_is_the_matrix_in_force() -> None:
    """§3 equals the table generated from PERMISSIONS (regenerate: see the module docstring)."""
    assert _section(DOC.read_text(), "permissions") == permission_table(), (
        "docs/API.md §3 is stale: run python -m tests.api.test_api_doc --write")


def _problem_statuses() -> dict[str, set[int]]:
    """Every problem code the API can answer with, and its statuses."""
    import api.app  # noqa: F401  (imports every resource, hence every error class)
    from api.errors import status_for
    from ledger.errors import LedgerError

    known: dict[str, set[int]] = {
        "bad-request": {400}, "not-found": {404}, "method-not-allowed": {405},
        "invalid-request": {422}, "internal-error": {500},
    }
    pending = [LedgerError]
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        known.setdefault(cls.code, set()).add(status_for(cls.__new__(cls)))
    root = Path(__file__).resolve().parents[2]
    for source in (root / "api").rglob("*.py"):
        text = source.read_text()
        for status, code in re.findall(r'ApiProblem\(\s*(\d+),\s*"([^"]+)"', text):
            known.setdefault(code, set()).add(int(status))
        # A code named by a module constant (ApiProblem(401, SIGNATURE_REQUIRED, ...)).
        for status, name in re.findall(r"ApiProblem\(\s*(\d+),\s*([A-Z][A-Z0-9_]*)\s*,", text):
            module = ".".join(source.relative_to(root).with_suffix("").parts)
            code = getattr(importlib.import_module(module), name)
            known.setdefault(code, set()).add(int(status))
    return known


def test_every_documented_problem_type_exists_with_its_status() -> None:
    """Each row of §6's table names a code the API really answers with, at that status."""
    known = _problem_statuses()
    rows = re.findall(r"^\| (\d{3}) \| `/problems/([a-z0-9-]+)` \|", _section(
        DOC.read_text(), "problems"), re.M)
    assert len(rows) >= 40
    for status, code in rows:
        assert int(status) in known.get(code, set()), f"{code}: {known.get(code)}"
    documented = {code for _, code in rows}
    must = {"idempotency-key-required", "idempotency-conflict", "unauthenticated", "forbidden",
            "invalid-request", "insufficient-points", "hold-not-open", "transfers-disabled",
            "erasure-refused", "unknown-entry", "unknown-member", "version-mismatch",
            "precondition-required", "internal-error"}
    assert must <= documented


if __name__ == "__main__":
    table = permission_table()
    if "--write" in sys.argv:
        text = DOC.read_text()
        text = re.sub(r"(<!-- permissions:start -->\n).*?(<!-- permissions:end -->)",
                      lambda m: f"{m.group(1)}{table}\n{m.group(2)}", text, flags=re.S)
        DOC.write_text(text)
    print(table)
