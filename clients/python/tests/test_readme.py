"""The README's example runs verbatim against the live server."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def example() -> str:
    """The first ``python`` block after the README's ``## Example``."""
    text = README.read_text(encoding="utf-8")
    found = re.search(r"^## Example$.*?^```python\n(.*?)^```$", text, re.DOTALL | re.MULTILINE)
    assert found, "README.md has no ```python block under ## Example"
    return found.group(1)


def test_example_is_ten_lines_at_most() -> None:
    assert len(example().splitlines()) <= 10


def test_example_runs(server_url: str, admin_token: str, plugin_path: Path, tmp_path: Path) -> None:
    shutil.copy(plugin_path, tmp_path / "uppercase.wasm")
    env = {**os.environ, "TASKHOST_SERVER": server_url, "TASKHOST_TOKEN": admin_token}

    ran = subprocess.run(
        [sys.executable, "-c", example()], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )

    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == ["completed HELLO, WORLD", "404 not_found"]
