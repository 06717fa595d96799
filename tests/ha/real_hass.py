"""A real Home Assistant process, started the way `scripts/develop` starts it.

`scripts/develop` runs `python -m homeassistant --config config --debug` with
`config/configuration.yaml`, `config/custom_components` linked to this checkout's integration and
the checkout on PYTHONPATH. The `real_hass` fixture (tests/ha/conftest.py) does the same in a
temporary config folder, on a free port (`SETUP_PORT`, Home Assistant's own setting for its
default HTTP port: the development config has no `http:` block, which would raise a repair).

Nothing is skipped: requirements are processed as in development, so the log shows it when hass
would pip-install a package that `scripts/setup` should have provided.
"""

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).parents[2]
# What hass logs when it processes a requirement that is not installed yet.
_PIP_MARKERS = ("Attempting install of", "Unable to install package", "Requirements for ")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class RealHass:
    """A running `python -m homeassistant` and where to reach it."""

    base: str
    config: Path
    process: subprocess.Popen[bytes]

    @property
    def log(self) -> Path:
        """Home Assistant's own log file."""
        return self.config / "home-assistant.log"

    def log_lines(self) -> list[str]:
        """The log so far (empty before hass wrote one)."""
        return self.log.read_text(errors="replace").splitlines() if self.log.exists() else []

    def pip_installs(self) -> list[str]:
        """Log lines where hass tried (or failed) to install a requirement itself."""
        return [line for line in self.log_lines() if any(m in line for m in _PIP_MARKERS)]

    def errors(self) -> list[str]:
        """ERROR lines of the log."""
        return [line for line in self.log_lines() if " ERROR (" in line]


@contextmanager
def run_real_hass(
    config: Path,
    startup_timeout: float = 240.0,
    extra_yaml: str = "",
    python: str = sys.executable,
    port: int | None = None,
) -> Iterator[RealHass]:
    """Start hass with the development configuration in `config`; stop it on exit.

    `extra_yaml` is appended to the configuration; a `config` that exists already (a restart)
    keeps its storage, as a restarted Home Assistant does. `python` is the interpreter of Home
    Assistant's world (the end-to-end tests run from the server's). A restarted hass must get
    the `port` it had: onboarding stored it (`.storage/http`), and it wins over `SETUP_PORT`.
    """
    config.mkdir(parents=True, exist_ok=True)
    yaml = (ROOT / "config" / "configuration.yaml").read_text()
    (config / "configuration.yaml").write_text(yaml + extra_yaml)
    if not (config / "custom_components").exists():
        (config / "custom_components").symlink_to(ROOT / "custom_components")
    port = port or _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)])),
        "SETUP_PORT": str(port),
    }
    process = subprocess.Popen(
        [python, "-m", "homeassistant", "--config", str(config), "--debug"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # its own log: <config>/home-assistant.log
    )
    hass = RealHass(base=f"http://127.0.0.1:{port}", config=config, process=process)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            try:
                urllib.request.urlopen(f"{hass.base}/manifest.json", timeout=2).close()
                break
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None, "Home Assistant exited during start-up"
                assert time.monotonic() < deadline, (
                    f"Home Assistant did not serve HTTP in {startup_timeout:.0f} s"
                )
                time.sleep(1)
        yield hass
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
