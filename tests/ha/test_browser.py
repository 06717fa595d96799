"""The UI as a person meets it: onboarding, Settings > Devices & services, adding GIoT.

Drives Debian's Chromium (installed by scripts/setup) headless with Playwright's Python API, against
a real hass started as `scripts/develop` starts it (the `real_hass` fixture). It fails when a page
stays on "Loading…" (what happened while hass could not install the voice pipeline's packages), when
hass had to pip-install anything itself, or when the development config raises a repair.

Screenshots go to the test's temporary folder; with GIOT_SCREENSHOTS=docs/screenshots they are also
copied there (the committed copies in docs/ come from such a run).
"""

import os
import re
import shutil
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect, sync_playwright

from .real_hass import ROOT, RealHass

# Debian's chromium: Playwright must never download a browser of its own.
CHROMIUM = Path(os.environ.get("GIOT_CHROMIUM", "/usr/bin/chromium"))
# The machine's network is closed: without these, Chromium's own background connections are
# refused by the dozen; a fresh user-data folder per run (launch_persistent_context) too.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Generous: the CI machine has 2 cores, and the first page load compiles the frontend's JS.
TIMEOUT_MS = 90_000
PASSWORD = "development-only"


def _field(page: Page, label: str) -> Any:
    """A text field by its label (required fields show as "Label*")."""
    return page.get_by_role("textbox", name=re.compile(rf"^{re.escape(label)}\*?$"))


def _onboard(page: Page, base: str) -> None:
    """Create the owner and finish every onboarding step, as a person does."""
    page.goto(base)
    page.get_by_text("Create my smart home").click()
    _field(page, "Name").fill("Dev")
    _field(page, "Username").fill("dev")
    _field(page, "Password").fill(PASSWORD)
    _field(page, "Confirm password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_role("heading", name="Home location")).to_be_visible()
    page.get_by_role("button", name="Next").click()
    # The country comes preselected from the browser's locale (en-US); choosing one clears
    # Home Assistant's "country not configured" repair.
    expect(page.get_by_text("the country your home is in")).to_be_visible()
    expect(page.get_by_text("United States")).to_be_visible()
    page.get_by_role("button", name="Next").click()
    expect(page.get_by_role("heading", name="Help us help you")).to_be_visible()
    page.get_by_role("button", name="Next").click()
    expect(page.get_by_role("heading", name="All set!")).to_be_visible()
    page.get_by_role("button", name="Finish").click()
    expect(page.get_by_role("heading", name="Welcome Dev")).to_be_visible()


def _open_devices_and_services(page: Page) -> None:
    page.get_by_role("link", name="Settings", exact=True).click()
    page.get_by_role("link", name=re.compile(r"^Devices & services")).first.click()
    expect(page).to_have_url(re.compile(r"/config/integrations/dashboard$"))
    expect(page.get_by_role("button", name="Add integration")).to_be_visible()


def _add_giot(page: Page) -> None:
    """Add GIoT through its config flow: Add integration, search, submit, skip naming."""
    page.get_by_role("button", name="Add integration").click()
    expect(page.get_by_text("Select brand")).to_be_visible()
    page.keyboard.type("GIoT")  # the brand search has the focus
    page.get_by_role("button", name="GIoT", exact=True).click()
    expect(page.get_by_text("GIoT learns what each device")).to_be_visible()
    page.get_by_role("button", name="Submit").click()
    page.get_by_role("button", name="Skip and finish").click()
    # The frontend opens the new device's page.
    expect(page.get_by_role("heading", name="Service info")).to_be_visible()
    expect(page.get_by_text("GIoT hub")).to_be_visible()


def _assert_rendered(page: Page) -> None:
    """Nothing on the page still loads: no loading screen, no "Loading…" text, no spinner."""
    expect(page.locator("hass-loading-screen").filter(visible=True)).to_have_count(0)
    expect(page.get_by_text(re.compile(r"^\s*Loading")).filter(visible=True)).to_have_count(0)


def _screenshot(page: Page, folder: Path, name: str) -> None:
    path = folder / name
    page.screenshot(path=str(path))
    if target := os.environ.get("GIOT_SCREENSHOTS"):
        docs = ROOT / target
        docs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, docs / name)


def _frontend(page: Page, expression: str) -> Any:
    """Evaluate against the frontend's own `hass` object (its authenticated connection)."""
    script = "const hass = document.querySelector('home-assistant').hass"
    return page.evaluate(f"async () => {{ {script}; return {expression}; }}")


def test_ui_onboarding_and_adding_giot(real_hass: RealHass, tmp_path: Path) -> None:
    """Onboard and add GIoT in the browser; every page renders; no repair, no pip install."""
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: scripts/setup installs Debian's chromium"
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            locale="en-US",
            viewport={"width": 1280, "height": 800},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)
            _onboard(page, real_hass.base)
            _assert_rendered(page)

            _open_devices_and_services(page)
            _add_giot(page)
            _assert_rendered(page)
            _screenshot(page, shots, "giot-device.png")

            _open_devices_and_services(page)
            card = page.get_by_role("link", name=re.compile(r"^GIoT\b"))
            expect(card.get_by_role("heading", name="GIoT", exact=True)).to_be_visible()
            _assert_rendered(page)
            _screenshot(page, shots, "devices-and-services.png")

            components = _frontend(page, "hass.config.components")
            assert {"recorder", "history", "giot"} <= set(components)
            issues = _frontend(page, "(await hass.callWS({type: 'repairs/list_issues'})).issues")
            assert [(i["domain"], i["issue_id"]) for i in issues] == []
        finally:
            context.close()
    assert real_hass.pip_installs() == [], "hass installed requirements scripts/setup should have"
