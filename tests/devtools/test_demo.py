"""The demo's sample data is what the services accept (their own input schemas)."""

from __future__ import annotations

from datetime import date

import phonenumbers
import pytest

from devtools.demo import demo_subscribers, sample_action
from services.publisher.schemas import UrgentActionCreate
from services.subscriptions.schemas import SubscriberCreate


@pytest.mark.parametrize("phones", [True, False])
def test_demo_subscribers_are_valid_sign_ups(phones: bool) -> None:
    people = demo_subscribers("ab12", phones=phones)
    for person in people:
        SubscriberCreate.model_validate(person.signup())
        assert person.email is None or person.email.endswith("@example.net")
        if person.phone:
            assert phonenumbers.is_valid_number(phonenumbers.parse(person.phone))
    with_phone = [p for p in people if p.phone]
    assert bool(with_phone) is phones
    assert {p.language for p in people} == {"en", "fr"}
    assert len({p.email for p in people if p.email}) == len([p for p in people if p.email])


def test_sample_action_is_a_valid_draft() -> None:
    action = UrgentActionCreate.model_validate(sample_action(date(2026, 1, 1)))
    assert action.deadline == date(2026, 1, 15)
    assert set(action.content) == {"en", "fr"}


def test_the_demo_account_is_a_fresh_valid_console_sign_in() -> None:
    from devtools.demo import demo_account
    from services.publisher.staff import normalize_email

    email, password = demo_account()
    assert normalize_email(email) == email and len(password) >= 12
    assert demo_account()[0] != email
