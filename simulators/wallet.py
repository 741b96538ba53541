"""The money wallet of a prepaid (费控) meter: balance, limits, purchases.

Money is kept in fen (0.01 yuan). Consumption is charged per tariff at the meter's prices from
the energy registers, so the balance moves with the meter's clock like the registers do.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Limits", "PurchaseRecord", "Wallet"]

MAX_RECORDS = 10


@dataclass(frozen=True, slots=True)
class PurchaseRecord:
    time: dt.datetime
    count: int
    amount_fen: int
    before_fen: int
    after_fen: int
    total_fen: int

    def values(self) -> dict[str, float | int | str]:
        return {
            "purchase_time": self.time.replace(second=0, microsecond=0).isoformat(),
            "purchase_count": self.count,
            "purchase_amount_yuan": self.amount_fen / 100,
            "balance_before_purchase_yuan": self.before_fen / 100,
            "balance_after_purchase_yuan": self.after_fen / 100,
            "purchase_total_yuan": self.total_fen / 100,
        }


@dataclass
class Limits:
    alarm_1_fen: int = 2000
    alarm_2_fen: int = 500
    overdraft_fen: int = 1000
    hoarding_fen: int = 500000
    close_allowed_fen: int = 0


@dataclass
class Wallet:
    prices: tuple[float, ...]
    """yuan per kWh for each tariff T1..Tn"""
    customer_number: str
    credit_fen: int
    """signed balance at the moment the reference energies were taken"""
    reference_kwh: list[float]
    purchase_count: int = 0
    total_fen: int = 0
    limits: Limits = field(default_factory=Limits)
    records: deque[PurchaseRecord] = field(default_factory=lambda: deque(maxlen=MAX_RECORDS))
    opened: bool = True
    """remote account opened (开户 done)"""

    def balance_fen(self, energies: Sequence[float]) -> int:
        """Signed balance: negative = in overdraft."""
        cost = sum(
            (energies[i] - self.reference_kwh[i]) * self.prices[i] for i in range(len(self.prices))
        )
        return self.credit_fen - round(cost * 100)

    def remaining_fen(self, energies: Sequence[float]) -> int:
        return max(0, self.balance_fen(energies))

    def overdraft_fen(self, energies: Sequence[float]) -> int:
        return max(0, -self.balance_fen(energies))

    def exhausted(self, energies: Sequence[float]) -> bool:
        """Beyond the overdraft limit: the relay must trip."""
        return self.overdraft_fen(energies) > self.limits.overdraft_fen

    def set_balance(self, fen: int, energies: Sequence[float]) -> None:
        self.credit_fen = fen
        self.reference_kwh = list(energies)

    def would_hoard(self, amount_fen: int, energies: Sequence[float]) -> bool:
        """购电超囤积: the remaining amount after the credit (overdraft netted first) would exceed
        the hoarding limit. A limit of 0 means no limit (FW `JudgeBuyTimes`)."""
        limit = self.limits.hoarding_fen
        return limit != 0 and max(0, self.balance_fen(energies) + amount_fen) > limit

    def credit(
        self, amount_fen: int, count: int, energies: Sequence[float], when: dt.datetime
    ) -> PurchaseRecord:
        """Book a purchase (the caller has checked the rules). The overdraft is paid first:
        remaining′ = remaining + amount − overdraft, never below 0 while any is owed."""
        before = self.balance_fen(energies)
        self.set_balance(before + amount_fen, energies)
        self.purchase_count = count
        self.total_fen += amount_fen
        record = PurchaseRecord(
            when,
            count,
            amount_fen,
            max(0, before),
            max(0, before + amount_fen),
            self.total_fen,
        )
        self.records.appendleft(record)
        return record

    def record(self, index: int) -> PurchaseRecord | None:
        """The `index`-th last purchase (1 = the latest)."""
        if 1 <= index <= len(self.records):
            return self.records[index - 1]
        return None
