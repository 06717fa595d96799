"""Home Assistant's REST API as the frontend uses it: onboarding, flows, states."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any


class HassApi:
    """Calls to one real Home Assistant, authenticated after ``onboard``."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.token = ""

    def call(self, path: str, data: Any = None, *, form: bool = False, raw: bool = False) -> Any:
        """Call ``path`` (POST when ``data`` is given); JSON back, or text when ``raw``."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        body = None
        if data is not None:
            if form:
                body = urllib.parse.urlencode(data).encode()
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            else:
                body = json.dumps(data).encode()
                headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.base + path, data=body, headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = response.read()
        if raw:
            return answer.decode()
        return json.loads(answer) if answer else None

    def onboard(self) -> None:
        """Create the owner and keep an access token."""
        client_id = f"{self.base}/"
        user = self.call(
            "/api/onboarding/users",
            {
                "client_id": client_id,
                "name": "Owner",
                "username": "owner",
                "password": "e2e-only-pass",
                "language": "en",
            },
        )
        self.token = self.call(
            "/auth/token",
            {"grant_type": "authorization_code", "code": user["auth_code"], "client_id": client_id},
            form=True,
        )["access_token"]

    def flow(self, path: str, start: dict[str, Any], *steps: dict[str, Any]) -> dict[str, Any]:
        """Start a flow at ``path`` and answer its steps in order; the last result."""
        result: dict[str, Any] = self.call(path, start)
        for step in steps:
            result = self.call(f"{path}/{result['flow_id']}", step)
        return result

    def states(self) -> dict[str, dict[str, Any]]:
        return {s["entity_id"]: s for s in self.call("/api/states")}

    def set_state(
        self, entity_id: str, state: str, attributes: dict[str, Any] | None = None
    ) -> None:
        self.call(f"/api/states/{entity_id}", {"state": state, "attributes": attributes or {}})
