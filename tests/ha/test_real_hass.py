"""A real Home Assistant process, as `scripts/develop` runs it, loads GIoT from the config flow.

The other tests use the in-process `hass` fixture; this one uses `real_hass` (tests/ha/real_hass.py:
`python -m homeassistant` with `config/configuration.yaml`), onboards a user over HTTP and creates
the GIoT entry through the same REST calls the frontend makes. The browser test
(test_browser.py) does the same through the UI.
"""

import json
import urllib.parse
import urllib.request
from typing import Any

from .real_hass import RealHass


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


def test_real_hass_loads_giot(real_hass: RealHass) -> None:
    """Onboard, add GIoT through the config flow, and find the entry loaded."""
    base = real_hass.base
    client_id = f"{base}/"
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
    assert real_hass.pip_installs() == [], "hass installed requirements scripts/setup should have"
