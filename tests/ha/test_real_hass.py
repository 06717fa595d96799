"""A real Home Assistant process, as `scripts/develop` runs it, loads GIoT from the config flow.

The other tests use the in-process `hass` fixture; this one starts `python -m homeassistant` with a
development configuration like `config/configuration.yaml`, onboards a user over HTTP and creates
the GIoT entry through the same REST calls the frontend makes.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _call(
    url: str, data: dict[str, Any] | None = None, token: str | None = None, form: bool = False
) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = None
    if data is not None:
        if form:
            body = urllib.parse.urlencode(data).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            body = json.dumps(data).encode()
            headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.usefixtures("socket_enabled")
def test_real_hass_loads_giot(tmp_path: Path) -> None:
    """Onboard, add GIoT through the config flow, and find the entry loaded."""
    port = _free_port()
    config = tmp_path / "config"
    config.mkdir()
    development = (ROOT / "config" / "configuration.yaml").read_text()
    (config / "configuration.yaml").write_text(
        development.replace("http:\n", f"http:\n  server_host: 127.0.0.1\n  server_port: {port}\n")
    )
    (config / "custom_components").symlink_to(ROOT / "custom_components")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "homeassistant", "--config", str(config), "--skip-pip"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # its own log: <config>/home-assistant.log
    )
    base = f"http://127.0.0.1:{port}"
    client_id = f"{base}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/manifest.json", timeout=2).close()
                break
            except urllib.error.URLError, ConnectionError:
                assert process.poll() is None, "Home Assistant exited during start-up"
                assert time.monotonic() < deadline, "Home Assistant did not serve HTTP in 120 s"
                time.sleep(1)
        user = _call(
            f"{base}/api/onboarding/users",
            {
                "client_id": client_id,
                "name": "Dev",
                "username": "dev",
                "password": "development-only",
                "language": "en",
            },
        )
        token = _call(
            f"{base}/auth/token",
            {"grant_type": "authorization_code", "code": user["auth_code"], "client_id": client_id},
            form=True,
        )["access_token"]
        flow = _call(f"{base}/api/config/config_entries/flow", {"handler": "giot"}, token)
        assert flow["type"] == "form"
        assert flow["step_id"] == "user"
        done = _call(f"{base}/api/config/config_entries/flow/{flow['flow_id']}", {}, token)
        assert done["type"] == "create_entry"
        entries = _call(f"{base}/api/config/config_entries/entry", token=token)
        assert [(e["domain"], e["state"]) for e in entries if e["domain"] == "giot"] == [
            ("giot", "loaded")
        ]
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
