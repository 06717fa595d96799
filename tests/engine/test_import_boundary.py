"""The engine runs inside Home Assistant on musl: standard library and numpy only, never HA.

A static check reads every import statement; a dynamic check imports every engine module in a
fresh interpreter and looks at what got loaded, which also catches imports hidden in functions
that run at import time.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

ENGINE = Path(__file__).parents[2] / "engine" / "src" / "giot_engine"
ALLOWED_THIRD_PARTY = {"numpy"}
FORBIDDEN = ["homeassistant", "torch", "onnxruntime", "onnx", "flwr", "transformers", "tokenizers"]


def _modules() -> list[Path]:
    return sorted(ENGINE.glob("*.py"))


def test_engine_has_modules() -> None:
    """Guard against the glob silently matching nothing."""
    assert len(_modules()) >= 2


def test_static_imports_are_stdlib_or_numpy() -> None:
    """Every absolute import names the standard library or numpy."""
    offenders = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ALLOWED_THIRD_PARTY:
                    offenders.append(f"{path.name}: {name}")
    assert offenders == []


def test_importing_the_engine_loads_nothing_forbidden() -> None:
    """Import all engine modules in a clean interpreter and list what was loaded."""
    names = [p.stem for p in _modules() if p.stem != "__init__"]
    code = (
        "import importlib, json, sys\n"
        f"for n in {names!r}: importlib.import_module('giot_engine.' + n)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ENGINE.parents[2],
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = set(json.loads(out.stdout))
    assert "giot_engine" in loaded
    assert not loaded & set(FORBIDDEN), loaded & set(FORBIDDEN)
