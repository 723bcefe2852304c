"""The coordinator's registry of model versions, devices and federated rounds (SQLite embedded, PostgreSQL by URL)."""

from cloud.registry.base import (
    DeviceRecord,
    ModelEvent,
    ModelRecord,
    ModelState,
    Registry,
    RegistryUnavailable,
    RoundRecord,
)
from cloud.registry.open import default_registry, existing_registry, open_registry

__all__ = [
    "DeviceRecord",
    "ModelEvent",
    "ModelRecord",
    "ModelState",
    "Registry",
    "RegistryUnavailable",
    "RoundRecord",
    "default_registry",
    "existing_registry",
    "open_registry",
]
