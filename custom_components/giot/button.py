"""Hub button: train the local model now instead of waiting for the schedule."""

from typing import override

from homeassistant.components.button import ButtonEntity, ButtonEntityDescription
from homeassistant.const import EntityCategory
from homeassistant.core import HomeAssistant
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

from .coordinator import GIoTConfigEntry
from .entity import GIoTHubEntity

# Training is serialised by the local training's own lock.
PARALLEL_UPDATES = 1

TRAIN_NOW = ButtonEntityDescription(
    key="train_now",
    translation_key="train_now",
    entity_category=EntityCategory.CONFIG,
)


async def async_setup_entry(
    hass: HomeAssistant,
    entry: GIoTConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
) -> None:
    """Set up the train-now button."""
    async_add_entities([GIoTTrainButton(entry.runtime_data.coordinator, TRAIN_NOW)])


class GIoTTrainButton(GIoTHubEntity, ButtonEntity):
    """Runs a local training round in the executor."""

    @override
    async def async_press(self) -> None:
        """Train now."""
        await self.coordinator.training.async_train()
