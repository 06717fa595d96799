"""Fixtures the Home Assistant benchmarks need from the harness (as tests/ha/conftest.py does).

Imported at collection time, the integration is found in ``custom_components/``: imported after
the ``hass`` fixture starts, Home Assistant would mount the plugin's own testing config first and
report "Integration not found". Conftest files are not meant to be imported from one another, so
the two fixtures below repeat those of the tests rather than reach into ``tests/``.
"""

import shutil

import pytest
from pytest_homeassistant_custom_component.common import get_test_config_dir

import custom_components.giot  # noqa: F401


@pytest.fixture(autouse=True)
def auto_enable_custom_integrations(enable_custom_integrations: None) -> None:
    """Let Home Assistant load integrations from custom_components/."""


@pytest.fixture
def hass_config_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Give every run its own config directory.

    GIoT's window store writes real files under ``.storage/giot``: in the plugin's shared
    testing_config one run's files would be there for the next to read.
    """
    config_dir = tmp_path_factory.mktemp("config")
    shutil.copytree(get_test_config_dir(), config_dir, symlinks=True, dirs_exist_ok=True)
    return str(config_dir)
