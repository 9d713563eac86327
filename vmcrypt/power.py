"""A VM's power state and the transitions between them, as one table.

``PowerState.after(event)`` gives the state an event leads to, or raises
``PowerStateError`` saying why the event is not allowed in the current state.
The inventory stores the state by its value (``"off"``, ``"on"``, ``"suspended"``).
"""

from __future__ import annotations

import enum

from vmcrypt.errors import VmError


class PowerState(str, enum.Enum):
    """A VM's power state; the value is what the inventory stores."""

    OFF = "off"
    ON = "on"
    SUSPENDED = "suspended"

    def after(self, event: "PowerEvent") -> "PowerState":
        """The state ``event`` leads to; PowerStateError, saying why, when this state does not allow it."""
        try:
            return TRANSITIONS[(self, event)]
        except KeyError:
            raise PowerStateError(REFUSALS.get((self, event), f"cannot {event.value} a VM that is {self.describe()}"),
                                  self, event) from None

    def describe(self) -> str:
        """The state in words for messages ("powered off", ...)."""
        return {PowerState.OFF: "powered off", PowerState.ON: "powered on", PowerState.SUSPENDED: "suspended"}[self]


class PowerEvent(str, enum.Enum):
    """What an operation does to a VM's power; the value reads as a verb in messages."""

    POWER_ON = "power on"
    POWER_OFF = "power off"
    SUSPEND = "suspend"
    RESUME = "resume"


class PowerStateError(VmError):
    """An event that the VM's current power state does not allow."""

    def __init__(self, message: str, state: PowerState, event: PowerEvent) -> None:
        self.state = state
        self.event = event
        super().__init__(message)


TRANSITIONS: dict[tuple[PowerState, PowerEvent], PowerState] = {
    (PowerState.OFF, PowerEvent.POWER_ON): PowerState.ON,
    (PowerState.ON, PowerEvent.POWER_OFF): PowerState.OFF,
    (PowerState.ON, PowerEvent.SUSPEND): PowerState.SUSPENDED,
    (PowerState.SUSPENDED, PowerEvent.RESUME): PowerState.ON,
    (PowerState.SUSPENDED, PowerEvent.POWER_OFF): PowerState.OFF,  # discards the suspended state
}

# Why an event is refused, where a person needs more than "cannot".
REFUSALS: dict[tuple[PowerState, PowerEvent], str] = {
    (PowerState.ON, PowerEvent.POWER_ON): "the VM is already powered on",
    (PowerState.SUSPENDED, PowerEvent.POWER_ON): "the VM is suspended: resume it (or discard its .vmss with power off)",
    (PowerState.OFF, PowerEvent.POWER_OFF): "the VM is already powered off",
    (PowerState.OFF, PowerEvent.SUSPEND): "only a powered-on VM can be suspended",
    (PowerState.SUSPENDED, PowerEvent.SUSPEND): "only a powered-on VM can be suspended",
    (PowerState.OFF, PowerEvent.RESUME): "the VM is not suspended",
    (PowerState.ON, PowerEvent.RESUME): "the VM is not suspended",
}


def require_off(state: PowerState | str, path: str | None = None,
                what: str = "the VM must be powered off first") -> None:
    """Operations that rewrite a VM's files need it powered off."""
    if PowerState(state) is not PowerState.OFF:
        raise VmError(what, path)
