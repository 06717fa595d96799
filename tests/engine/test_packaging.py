"""Every world reaches the engine the same way: the installed ``giot-engine`` distribution.

Runs in both interpreters (Home Assistant's 3.14 and the server's 3.11). Each check starts a
clean interpreter, so nothing this test process imported (a symlink, an alias, a module
registered by hand) can make it pass.
"""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[2]
ENGINE = ROOT / "engine" / "src" / "giot_engine"
VERSION = tomllib.loads((ROOT / "engine" / "pyproject.toml").read_text())["project"]["version"]


def clean_interpreter(code: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter outside the repository; it prints one JSON object."""
    out = subprocess.run(
        [sys.executable, "-I", "-c", code],  # -I: no cwd, no PYTHONPATH, no user site
        cwd=ROOT.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout))


def test_engine_is_the_installed_distribution() -> None:
    """``import giot_engine`` finds this checkout's engine through its installed metadata."""
    seen = clean_interpreter(
        "import importlib.metadata as m, json, giot_engine\n"
        "print(json.dumps({'file': giot_engine.__file__, 'version': m.version('giot-engine')}))"
    )
    assert Path(str(seen["file"])).resolve() == (ENGINE / "__init__.py").resolve()
    assert seen["version"] == VERSION


def test_no_second_name_for_the_engine() -> None:
    """No symlink or folder outside engine/ offers the engine under another import path."""
    assert not (ROOT / "giot_engine").exists()
    assert not (ROOT / "custom_components" / "giot" / "engine").exists()
    assert not list((ROOT / "custom_components" / "giot").glob("**/tokenizer.py"))


def test_the_integration_pins_this_engine_version() -> None:
    """Home Assistant installs the engine from the manifest: the pin is this version."""
    manifest = json.loads((ROOT / "custom_components" / "giot" / "manifest.json").read_text())
    assert f"giot-engine=={VERSION}" in manifest["requirements"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert f"giot-engine=={VERSION}" in project["dependencies"]  # the Flower app's dependency
