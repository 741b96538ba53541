"""The load switch of a meter (1CH remote control, prepaid trips) and its status-word bits.

States follow the 2013 cost-control rules: a trip is refused while keep-power (保电) is on;
"close allowed" waits for the customer to press the button (`press_button`); "direct close"
closes at once; keep-power closes the switch and holds it closed.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocols.dlt645 import RelayAction

__all__ = ["Relay"]

# running status word 3 bits (protocols/dlt645/catalogue.py names them)
BIT_RELAY_OPEN = 1 << 4
BIT_COMMAND_OPEN = 1 << 6
BIT_PRE_TRIP_ALARM = 1 << 7
BIT_KEEP_POWER = 1 << 12


@dataclass
class Relay:
    open: bool = False
    """contact state: True = load disconnected"""
    command_open: bool = False
    """the last command (remote or prepaid) asks for open"""
    keep_power: bool = False
    alarm: bool = False
    close_allowed: bool = False
    """a close is allowed and waits for the customer's button"""
    prepaid_tripped: bool = False

    def apply(self, action: RelayAction, *, move: bool = True) -> bool:
        """Carry out a remote-control action. False = refused (a trip while keep-power).

        `move` False: a contact that does not follow its command (a welded or broken relay,
        负荷开关拒动) — the command state changes, the contact stays where it is."""
        if action is RelayAction.TRIP:
            if self.keep_power:
                return False
            self.command_open = True
            self.open = self.open or move
            self.close_allowed = False
            # a remote trip outlives a later credit (FW: 远程充值后仍然拉闸): only a 1CH close
            # command closes it again, not the money logic
            self.prepaid_tripped = False
        elif action is RelayAction.CLOSE_ALLOWED:
            self.command_open = False
            self.close_allowed = self.open
        elif action is RelayAction.DIRECT_CLOSE:
            self.command_open = self.close_allowed = False
            self.open = self.open and not move
            self.prepaid_tripped = False
        elif action is RelayAction.ALARM:
            self.alarm = True
        elif action is RelayAction.ALARM_RELEASE:
            self.alarm = False
        elif action is RelayAction.KEEP_POWER:
            self.keep_power = True
            self.command_open = self.close_allowed = False
            self.open = self.open and not move
        elif action is RelayAction.KEEP_POWER_RELEASE:
            self.keep_power = False
        return True

    def press_button(self) -> bool:
        """The customer presses the close button: closes if a close is allowed."""
        if self.open and self.close_allowed and not self.command_open:
            self.open = self.close_allowed = False
            return True
        return False

    def prepaid_trip(self) -> bool:
        """The wallet is exhausted beyond the overdraft limit. True if the contact opened."""
        if self.keep_power or self.open:
            return False
        self.open = self.command_open = self.prepaid_tripped = True
        return True

    def prepaid_restore(self) -> None:
        """Money is back above the close-allowed limit: allow closing (the customer's button)."""
        if self.prepaid_tripped:
            self.prepaid_tripped = False
            self.command_open = False
            self.close_allowed = self.open

    @property
    def status_bits(self) -> int:
        word = 0
        if self.open:
            word |= BIT_RELAY_OPEN
        if self.command_open:
            word |= BIT_COMMAND_OPEN
        if self.alarm:
            word |= BIT_PRE_TRIP_ALARM
        if self.keep_power:
            word |= BIT_KEEP_POWER
        return word
