"""Message-IDs and VERP senders: fixed by what the message is, signed, free of personal data."""

from __future__ import annotations

import uuid

import pytest

from services.dispatcher.identity import MessageRef, MessageTags
from shared.settings import Settings

TAGS = MessageTags("s3cret", domain="example.org", bounce_address="bounces@example.org")


@pytest.mark.parametrize(
    "ref",
    [
        MessageRef.delivery(1),
        MessageRef.delivery(9_876_543_210),
        MessageRef.digest(42),
        MessageRef.letter(7),
        MessageRef.transactional(str(uuid.uuid4())),
    ],
)
def test_every_kind_of_message_reads_back_from_its_message_id_and_bounce_address(
    ref: MessageRef,
) -> None:
    message_id = TAGS.message_id(ref)
    assert message_id.startswith("<") and message_id.endswith("@example.org>")
    assert TAGS.from_message_id(message_id) == ref
    assert TAGS.from_message_id(message_id.strip("<>")) == ref  # as ESPs often quote it
    sender = TAGS.envelope_sender(ref)
    assert sender is not None and sender.startswith("bounces+") and sender.endswith("@example.org")
    assert TAGS.from_bounce_address(sender) == ref
    assert TAGS.from_bounce_address(sender.upper()) == ref  # relays may change the case
    local = sender.partition("@")[0]
    assert len(local) <= 64  # RFC 5321's limit on a local part


def test_the_same_message_gets_the_same_id_in_every_process() -> None:
    again = MessageTags("s3cret", domain="example.org")
    assert again.message_id(MessageRef.delivery(5)) == TAGS.message_id(MessageRef.delivery(5))
    assert TAGS.message_id(MessageRef.delivery(5)) != TAGS.message_id(MessageRef.delivery(6))
    assert TAGS.message_id(MessageRef.delivery(5)) != TAGS.message_id(MessageRef.letter(5))


def test_a_forged_or_foreign_tag_names_nothing() -> None:
    real = TAGS.tag(MessageRef.delivery(5))
    forged = "d6" + real[2:]  # another row, the signature of the first
    assert TAGS.read(forged) is None
    assert TAGS.read(real[:-1] + ("a" if real[-1] != "a" else "b")) is None
    other_key = MessageTags("another secret", domain="example.org")
    assert other_key.from_message_id(TAGS.message_id(MessageRef.delivery(5))) is None
    for junk in ["", "<>", "<@example.org>", "<CAF=abc@mail.gmail.com>", "d5", "x5-aaaaaaaaaa"]:
        assert TAGS.from_message_id(junk) is None
    sender = TAGS.envelope_sender(MessageRef.delivery(5))
    assert sender is not None
    assert TAGS.from_bounce_address(sender.replace("@example.org", "@elsewhere.org")) is None
    assert TAGS.from_bounce_address(sender.replace("bounces+", "other+")) is None
    assert TAGS.from_bounce_address("bounces@example.org") is None


def test_without_a_bounce_address_the_envelope_sender_is_left_to_the_caller() -> None:
    plain = MessageTags("s3cret", domain="example.org")
    assert not plain.verp_enabled and plain.envelope_sender(MessageRef.delivery(1)) is None
    assert plain.from_bounce_address("bounces+d1-aaaaaaaaaa@example.org") is None


def test_the_bounce_address_setting_takes_only_a_plain_address() -> None:
    assert Settings(bounce_address="Bounces@Example.org").bounce_address == "bounces@example.org"
    assert Settings(bounce_address="").bounce_address is None
    for bad in ["bounces", "bounces+x@example.org", "a b@example.org", "x@localhost", "é@x.org"]:
        with pytest.raises(ValueError):
            Settings(bounce_address=bad)
