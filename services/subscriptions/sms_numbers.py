"""Which numbers a sign-up may ask us to text (contract §11): mobiles only, in the countries the
deployment texts (``UANET_SMS_COUNTRIES``).

A confirmation SMS to a premium-rate, shared-cost or foreign number costs real money per message,
and whoever signs such numbers up by the hundred is paid for it (SMS pumping). ``phonenumbers``
tells the kind of a number from its numbering plan; where a plan does not tell a mobile from a
fixed line (the United States, Canada and a few others) it answers FIXED_LINE_OR_MOBILE, which is
taken too, or nobody there could sign up.
"""

from __future__ import annotations

import phonenumbers
from phonenumbers import PhoneNumberType

# The region of international networks (satellite phones, Inmarsat and the like): in no country,
# and among the dearest numbers to text.
NON_GEOGRAPHIC = "001"
TEXTABLE = frozenset({PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE})

NOT_MOBILE = "must be a mobile number (no premium-rate, shared-cost, toll-free or VoIP numbers)"
NOT_SERVED = "we do not send SMS to numbers of this country"


def refusal(phone: str, countries: frozenset[str]) -> str | None:
    """Why ``phone`` (E.164) may not sign up, or None; ``countries`` empty: every country."""
    number = phonenumbers.parse(phone, None)
    region = phonenumbers.region_code_for_number(number)
    if region == NON_GEOGRAPHIC or (countries and region not in countries):
        return NOT_SERVED
    if phonenumbers.number_type(number) not in TEXTABLE:
        return NOT_MOBILE
    return None
