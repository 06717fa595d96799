"""Hub switches: pause federated participation, and away mode (which changes expectations)."""

from dataclasses import dataclass
from typing import Any, Literal, override

from homeassistant.components.switch import SwitchEntity, SwitchEntityDescription
from homeassistant.const import EntityCategory
from homeassistant.core import HomeAssistant
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

from .coordinator import GIoTConfigEntry
from .entity import GIoTHubEntity

# Switching only changes the coordinator's state in the event loop.
PARALLEL_UPDATES = 0


@dataclass(frozen=True, kw_only=True)
class GIoTSwitchEntityDescription(SwitchEntityDescription):
    """A hub flag the switch flips."""

    flag: Literal["federation_paused", "away_mode"]


SWITCHES = (
    GIoTSwitchEntityDescription(
        key="federation_paused",
        translation_key="federation_paused",
        entity_category=EntityCategory.CONFIG,
        flag="federation_paused",
    ),
    GIoTSwitchEntityDescription(
        key="away_mode",
        translation_key="away_mode",
        flag="away_mode",
    ),
)


async def async_setup_entry(
    hass: HomeAssistant,
    entry: GIoTConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
) -> None:
    """Set up the hub switches."""
    coordinator = entry.runtime_data.coordinator
    async_add_entities(GIoTSwitch(coordinator, description) for description in SWITCHES)


class GIoTSwitch(GIoTHubEntity, SwitchEntity):
    """A remembered hub flag.

    Away mode does not mute anything: it tells the coordinator to expect a quiet home, so
    activity needs less surprise to alarm and anything operated by hand is reported.
    """

    entity_description: GIoTSwitchEntityDescription

    @property
    @override
    def is_on(self) -> bool:
        """Whether the flag is set."""
        return bool(getattr(self.coordinator.hub, self.entity_description.flag))

    @override
    async def async_turn_on(self, **kwargs: Any) -> None:
        """Set the flag."""
        self.coordinator.async_set_hub_flag(self.entity_description.flag, True)

    @override
    async def async_turn_off(self, **kwargs: Any) -> None:
        """Clear the flag."""
        self.coordinator.async_set_hub_flag(self.entity_description.flag, False)
