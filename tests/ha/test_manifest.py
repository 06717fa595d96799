"""The integration's metadata is what Home Assistant, hassfest and HACS accept."""

import json
import re
from pathlib import Path

import homeassistant
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from custom_components.giot.event import DEVICE_ALERTS, NETWORK_EVENTS

ROOT = Path(__file__).parents[2]
INTEGRATION = ROOT / "custom_components" / "giot"
MANIFEST = json.loads((INTEGRATION / "manifest.json").read_text())
HACS = json.loads((ROOT / "hacs.json").read_text())


def _ha_pins() -> dict[str, str]:
    """Home Assistant's own pins (package_constraints.txt of the installed release)."""
    pins: dict[str, str] = {}
    text = (Path(homeassistant.__file__).parent / "package_constraints.txt").read_text()
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name.split("[")[0])] = version.strip()
    return pins


def test_manifest_keys() -> None:
    """Keys hassfest and HACS require; domain and name first, the rest sorted."""
    for key in ("domain", "name", "version", "documentation", "issue_tracker", "codeowners"):
        assert MANIFEST[key], key
    assert MANIFEST["domain"] == INTEGRATION.name
    assert MANIFEST["config_flow"] is True
    assert MANIFEST["iot_class"] == "local_push"
    assert MANIFEST["integration_type"] == "hub"
    keys = list(MANIFEST)
    assert keys[:2] == ["domain", "name"]
    assert keys[2:] == sorted(keys[2:])
    assert "home-assistant.io" not in MANIFEST["documentation"]
    assert MANIFEST["zeroconf"] == ["_giot._tcp.local."]


def test_requirements_resolve_against_home_assistant_pins() -> None:
    """Every requirement admits the version Home Assistant pins, and none is musl-hostile."""
    pins = _ha_pins()
    assert "numpy" in pins, "Home Assistant no longer pins numpy: re-check the musl decision"
    for text in MANIFEST["requirements"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name not in {"torch", "onnxruntime", "onnx", "flwr", "scikit-learn", "protobuf"}
        if name in pins:
            assert requirement.specifier.contains(pins[name], prereleases=True), (
                f"{text} conflicts with Home Assistant's pin {name}=={pins[name]}"
            )


@pytest.mark.parametrize("path", ["manifest.json", "strings.json", "icons.json"])
def test_json_files_parse(path: str) -> None:
    """The integration's JSON files are valid JSON objects."""
    assert isinstance(json.loads((INTEGRATION / path).read_text()), dict)


def test_hacs_json() -> None:
    """hacs.json holds only keys HACS knows, and the minimum HA version we test against."""
    allowed = {
        "name",
        "content_in_root",
        "zip_release",
        "filename",
        "hide_default_branch",
        "country",
        "homeassistant",
        "hacs",
        "persistent_directory",
    }
    assert HACS["name"] == MANIFEST["name"]
    assert set(HACS) <= allowed
    assert tuple(map(int, HACS["homeassistant"].split(".")[:2])) <= tuple(
        map(int, homeassistant.const.__version__.split(".")[:2])
    )


def test_translations_match_strings() -> None:
    """translations/en.json has every key strings.json has."""

    def keys(node: object, prefix: str = "") -> set[str]:
        if isinstance(node, dict):
            return {k for key, v in node.items() for k in keys(v, f"{prefix}{key}.")}
        return {prefix}

    strings = json.loads((INTEGRATION / "strings.json").read_text())
    english = json.loads((INTEGRATION / "translations" / "en.json").read_text())
    assert keys(strings) == keys(english)


def test_brand_icon_is_png() -> None:
    """HACS's brand check and HA 2026.3+ read custom_components/giot/brand/icon.png."""
    assert (INTEGRATION / "brand" / "icon.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_translation_key_in_the_code_is_translated() -> None:
    """Entities, exceptions and repair issues name keys strings.json has (else users see keys)."""
    strings = json.loads((INTEGRATION / "strings.json").read_text())
    known = set(strings["exceptions"]) | set(strings["issues"])
    known |= {key for platform in strings["entity"].values() for key in platform}
    used = {
        match
        for path in INTEGRATION.glob("*.py")
        for match in re.findall(r'translation_key="(\w+)"', path.read_text())
    }
    assert used
    assert used - known == set()


def test_every_alert_type_is_translated_and_has_an_icon() -> None:
    """The alert event's types (absence included) have names and icons, per-device and hub."""
    strings = json.loads((INTEGRATION / "strings.json").read_text())["entity"]["event"]
    icons = json.loads((INTEGRATION / "icons.json").read_text())["entity"]["event"]
    for key, description in (("alert", DEVICE_ALERTS), ("alert_of", DEVICE_ALERTS)):
        types = set(description.event_types or [])
        assert {"device_silent", "stuck_state"} <= types
        names = strings[key]["state_attributes"]["event_type"]["state"]
        assert set(names) == types
        assert set(icons[key]["state_attributes"]["event_type"]["state"]) == types
    network = strings["network"]["state_attributes"]["event_type"]["state"]
    assert set(network) == set(NETWORK_EVENTS.event_types or [])
