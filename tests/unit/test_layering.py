"""The layering of STYLE.md, checked by machine so it cannot erode."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ledger", "partners", "settlement", "audit", "api")


def test_import_contracts_hold() -> None:
    """The import-linter contracts hold: ledger imports nothing of ours, only api knows Flask."""
    result = subprocess.run(
        [sys.executable, "-m", "importlinter.cli", "--config", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:  # older import-linter has no module entry point
        result = subprocess.run(
            [str(Path(sys.executable).with_name("lint-imports"))],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
    assert result.returncode == 0, result.stdout + result.stderr


def _reads_environment(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in ("environ", "getenv")
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
        ):
            return True
    return False


def test_only_api_reads_the_environment() -> None:
    """No module outside api/ touches os.environ or os.getenv: configuration is passed in."""
    offenders = [
        str(path.relative_to(ROOT))
        for package in PACKAGES
        if package != "api"
        for path in (ROOT / package).rglob("*.py")
        if _reads_environment(path)
    ]
    assert offenders == []
