from __future__ import annotations

import pytest

from shared.settings import SettingsError, load_settings


def test_defaults_match_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "UANET_AMQP_URL",
        "UANET_PUBLIC_URL",
        "UANET_PUBLISHER_PORT",
        "UANET_DATABASE_CONNECTIONS",
    ):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.amqp_url == "amqp://guest:guest@localhost:5672/"
    assert settings.publisher_database_url == "sqlite+aiosqlite:///var/publisher.db"
    assert (settings.publisher_port, settings.subscriptions_port, settings.dispatcher_port) == (
        8001,
        8002,
        8003,
    )
    assert settings.public_url == "http://localhost:8002"
    assert settings.twilio_api_base == "https://api.twilio.com"
    assert not settings.twilio_enabled
    assert settings.database_connections == 20


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("UANET_AMQP_URL", "http://nope"),
        ("UANET_PUBLISHER_PORT", "eighty"),
        ("UANET_SMTP_STARTTLS", "perhaps"),
        ("UANET_EMAIL_RATE", "-1"),
        ("UANET_TWILIO_FROM", "12345"),
        ("UANET_SUBSCRIPTIONS_DATABASE_URL", "mysql://x"),
        ("UANET_SMS_COUNTRIES", "GB,XX"),
        ("UANET_CONFIRMATION_SMS_PER_HOUR", "-5"),
        ("UANET_SIGNUP_ORIGINS", "https://campaign.example.org/page"),
        ("UANET_SIGNUP_ORIGINS", "campaign.example.org"),
        ("UANET_DATABASE_CONNECTIONS", "1"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(variable + ":")
    assert "\n" not in message


def test_secret_is_required_to_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UANET_SECRET_KEY", raising=False)
    with pytest.raises(SettingsError, match="UANET_SECRET_KEY"):
        load_settings().require_secret()


def test_the_sign_up_guards_read_as_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UANET_SMS_COUNTRIES", " gb, ie ,FR,")
    monkeypatch.setenv(
        "UANET_SIGNUP_ORIGINS", "https://Campaign.Example.org/, http://localhost:8080"
    )
    settings = load_settings()
    assert settings.sms_country_set == {"GB", "IE", "FR"}
    assert settings.signup_origin_set == {
        "https://campaign.example.org",
        "http://localhost:8080",
    }
    monkeypatch.delenv("UANET_SMS_COUNTRIES")
    monkeypatch.delenv("UANET_CONFIRMATION_SMS_PER_HOUR", raising=False)
    defaults = load_settings()
    assert defaults.sms_country_set == frozenset()  # every country
    assert defaults.confirmation_sms_per_hour == 100
