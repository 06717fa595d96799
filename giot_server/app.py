"""The GIoT Flower app (ServerApp + ClientApp), staged for ``flwr run``.

``flwr run DIR`` builds the app bundle (FAB) from ``DIR``: its ``pyproject.toml`` (the
``[tool.flwr.app]`` tables, run-config keys and defaults) and the files ``fab-include`` names.
Flower's builder walks the whole folder (``.venv*`` included) before filtering, 12 s at the
repository root, so the files are copied into a small folder first, the way the builder picks them.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path


def find_project() -> Path | None:
    """Return the project folder this package was installed from (editable or checkout)."""
    root = Path(__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and "app" in tomllib.loads(pyproject.read_text("utf-8")).get(
        "tool", {}
    ).get("flwr", {}):
        return root
    return None


def stage_app(root: Path, dest: Path) -> Path:
    """Copy the app's files from project ``root`` into a new folder ``dest``."""
    dest.mkdir(parents=True)
    shutil.copy(root / "pyproject.toml", dest / "pyproject.toml")
    if (root / ".gitignore").is_file():
        shutil.copy(root / ".gitignore", dest / ".gitignore")
    table = tomllib.loads((root / "pyproject.toml").read_text("utf-8"))["tool"]["flwr"]["app"]
    patterns: list[str] = table["fab-include"]
    for pattern in patterns:
        for src in root.glob(pattern):
            if src.is_file() and "__pycache__" not in src.parts:
                target = dest / src.relative_to(root)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, target)
    return dest
