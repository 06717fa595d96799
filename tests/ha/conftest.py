"""Fixtures for the Home Assistant tests.

The integration package is imported here, at collection time, on purpose: if it were first
imported after the ``hass`` fixture starts, Home Assistant would mount the test plugin's own
``testing_config/custom_components`` first and report "Integration not found".
"""

from collections.abc import Generator
from unittest.mock import patch

import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry

import custom_components.giot  # noqa: F401  (see module docstring)
from custom_components.giot.const import DOMAIN


@pytest.fixture(autouse=True)
def auto_enable_custom_integrations(enable_custom_integrations: None) -> None:
    """Let Home Assistant load integrations from custom_components/."""


@pytest.fixture
def mock_config_entry() -> MockConfigEntry:
    """A GIoT entry as the user step creates it."""
    return MockConfigEntry(domain=DOMAIN, title="GIoT", data={})


@pytest.fixture
def mock_setup_entry() -> Generator[None]:
    """Keep config flow tests from setting the entry up."""
    with patch("custom_components.giot.async_setup_entry", return_value=True):
        yield
