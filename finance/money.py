"""Money as the suite shows it: `Decimal`, rounded ROUND_HALF_UP to cents."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")
ZERO = Decimal("0")


def round_money(value: Decimal) -> Decimal:
    """Money shown: ROUND_HALF_UP to cents, never "-0.00"."""
    result = Decimal(value).quantize(CENT, rounding=ROUND_HALF_UP)
    return result if result != 0 else Decimal("0.00")
