"""The README's five-minute tour works as written against the demo.

The test does what the README tells a newcomer to do: run the demo (here with ``--no-serve`` and a
small population, then the demo's own serve function on a free port, which ``--port`` writes into
``coalition-demo.env``), then run every ``sh`` block between the README's tour markers, in order,
in one bash session started in the demo's directory. Nothing is substituted: the blocks read the
port, tokens and keys from the file the demo wrote, exactly as the README says. ``curl -f`` makes
any HTTP error fail the block.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from api.cli import main
from tests.conftest import PG_URL
from tests.e2e.conftest import Service, free_port, wait_ready

README = Path(__file__).resolve().parents[2] / "README.md"


def tour_blocks() -> list[str]:
    """The ``sh`` blocks between ``<!-- tour:start -->`` and ``<!-- tour:end -->``."""
    text = README.read_text(encoding="utf-8")
    tour = text.split("<!-- tour:start -->", 1)[1].split("<!-- tour:end -->", 1)[0]
    return re.findall(r"^```sh\n(.*?)^```$", tour, flags=re.MULTILINE | re.DOTALL)


def test_the_tour_has_what_the_readme_promises() -> None:
    script = "\n".join(tour_blocks())
    assert script.startswith("source coalition-demo.env")
    for step in (
        "/v1/members",
        "/v1/earn",
        "/v1/burn",
        "/receipt",
        "coalition audit check-receipt",
        "/v1/settlement/periods/$PERIOD/statements/RAIL",
        "coalition audit verify",
    ):
        assert step in script, step


@pytest.mark.slow
@pytest.mark.skipif(PG_URL is not None, reason="the demo runs on an embedded SQLite file")
@pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("jq") is None, reason="the tour needs curl and jq"
)
def test_every_tour_command_works_against_the_demo(tmp_path: Path) -> None:
    port = free_port()
    demo = CliRunner().invoke(
        main,
        [
            "demo",
            "--members",
            "20",
            "--days",
            "40",
            "--dir",
            str(tmp_path),
            "--port",
            str(port),
            "--no-serve",
        ],
        catch_exceptions=False,
    )
    assert demo.exit_code == 0, demo.output
    # The environment a newcomer's shell has: no COALITION_* settings of its own, and the
    # `coalition` command of this installation on the PATH.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COALITION_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    serve = (
        "import sys; from pathlib import Path; from api.demo_finish import DemoFiles, serve; "
        "serve(DemoFiles(Path(sys.argv[1])), '127.0.0.1', int(sys.argv[2]))"
    )
    server = Service(
        [sys.executable, "-c", serve, str(tmp_path / "coalition-demo.db"), str(port)],
        env,
        tmp_path / "server.log",
    )
    server.start()
    try:
        wait_ready(port, server, timeout=60)
        blocks = tour_blocks()
        assert len(blocks) >= 6
        script = ["set -euo pipefail"]
        for number, block in enumerate(blocks):
            script += [block, f"echo '--- tour block {number} done'"]
        done = subprocess.run(
            ["bash", "-c", "\n".join(script)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        transcript = f"{done.stdout}\n{done.stderr}\n--- server log:\n{server.log_tail()}"
        assert done.returncode == 0, transcript
        for number in range(len(blocks)):
            assert f"--- tour block {number} done" in done.stdout, transcript
        # What the blocks printed: the receipt checked offline, the ledger verified.
        assert "OK: entry " in done.stdout
        assert "(BURN)" in done.stdout
        assert "OK: the ledger verifies" in done.stdout
        assert (tmp_path / "rail-statement.pdf").read_bytes()[:5] == b"%PDF-"
    finally:
        server.stop()
