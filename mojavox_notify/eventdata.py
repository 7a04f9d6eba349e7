"""Helpers for plugin authors: typed reads of an event's data, and the formats messages use.

Every failed read raises `ValidationError` naming `data.<field>`, which `POST /api/events`
answers with a 400, so a plugin validates its payload by simply reading it.
"""

from __future__ import annotations

import math
import re
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Iterable, Mapping

from .errors import ValidationError

CURRENCY = re.compile(r"^[A-Z]{3}$")
_MISSING = object()


class EventData:
    def __init__(self, data: Mapping[str, Any]):
        self._data = data

    def _get(self, name: str, optional: bool) -> Any:
        value = self._data.get(name, _MISSING)
        if value is _MISSING or value is None:
            if optional:
                return None
            raise ValidationError(f"data.{name}", "is required")
        return value

    def text(self, name: str, optional: bool = False, max_length: int = 256) -> str | None:
        value = self._get(name, optional)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise ValidationError(f"data.{name}", "must be a non-empty string")
        if len(value) > max_length:
            raise ValidationError(f"data.{name}", f"must be at most {max_length} characters")
        return value.strip()

    def number(self, name: str, optional: bool = False, minimum: float | None = None,
               maximum: float | None = None) -> int | float | None:
        value = self._get(name, optional)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValidationError(f"data.{name}", "must be a number")
        if minimum is not None and value < minimum:
            raise ValidationError(f"data.{name}", f"must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise ValidationError(f"data.{name}", f"must be at most {maximum}")
        return value

    def choice(self, name: str, allowed: Iterable[str], optional: bool = False) -> str | None:
        allowed = tuple(allowed)
        value = self._get(name, optional)
        if value is None:
            return None
        if value not in allowed:
            raise ValidationError(f"data.{name}", f"must be one of {', '.join(allowed)}")
        return value

    def text_list(self, name: str, max_items: int = 1000, max_length: int = 128) -> list[str]:
        value = self._get(name, optional=False)
        if not isinstance(value, list) or not value:
            raise ValidationError(f"data.{name}", "must be a non-empty list of strings")
        if len(value) > max_items:
            raise ValidationError(f"data.{name}", f"must have at most {max_items} items")
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item.strip() or len(item) > max_length:
                raise ValidationError(f"data.{name}[{index}]",
                                      f"must be a non-empty string of at most {max_length} characters")
        return list(dict.fromkeys(item.strip() for item in value))

    def currency(self, name: str = "currency") -> str:
        value = self._get(name, optional=True)
        if value is None:
            return "USD"
        if not isinstance(value, str) or not CURRENCY.match(value):
            raise ValidationError(f"data.{name}", "must be an ISO 4217 code such as USD or EUR")
        return value


# Money amounts (payments, balances) at most this: formatted to the cent they stay within the
# 28 significant digits of decimal arithmetic, and no call center sees more.
MAX_AMOUNT = 10 ** 15


def format_money(amount: int | float, currency: str = "USD") -> str:
    """`$2,450.00` for US dollars, `2,450.00 EUR` for any other currency."""
    rounded = Decimal(str(amount)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    text = f"{abs(rounded):,.2f}"
    sign = "-" if rounded < 0 else ""
    return f"{sign}${text}" if currency == "USD" else f"{sign}{text} {currency}"


def format_duration(seconds: int | float) -> str:
    """`4m 32s`, `1h 05m`, `45s`."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"
