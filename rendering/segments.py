"""How many SMS segments a text costs (the SMS rate counts segments, as carriers bill them).

GSM-7: 160 septets in one message, 153 per part of a longer one; the extension characters
(``^{}\\[~]|€`` and form feed) take two septets and an escape pair is never split across parts.
Anything outside GSM-7 goes as UCS-2: 70 UTF-16 code units alone, 67 per part, and a surrogate
pair (an emoji) is never split either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")

GSM7_SINGLE, GSM7_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67


@dataclass(frozen=True)
class SmsSize:
    encoding: Literal["GSM-7", "UCS-2"]
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int


def is_gsm7(text: str) -> bool:
    return all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text)


def _pack(unit_sizes: list[int], single: int, part: int) -> int:
    """Segments needed for characters of these sizes, never splitting one character."""
    total = sum(unit_sizes)
    if total == 0:
        return 0
    if total <= single:
        return 1
    segments, used = 1, 0
    for size in unit_sizes:
        if used + size > part:
            segments += 1
            used = 0
        used += size
    return segments


def sms_size(text: str) -> SmsSize:
    if is_gsm7(text):
        septets = [2 if ch in GSM7_EXTENSION else 1 for ch in text]
        return SmsSize("GSM-7", sum(septets), _pack(septets, GSM7_SINGLE, GSM7_PART))
    units = [2 if ord(ch) > 0xFFFF else 1 for ch in text]
    return SmsSize("UCS-2", sum(units), _pack(units, UCS2_SINGLE, UCS2_PART))


def segment_count(text: str) -> int:
    """Segments a text costs; an empty text still costs one message."""
    return max(sms_size(text).segments, 1)
