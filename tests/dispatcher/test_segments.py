from rendering.segments import segment_count, sms_size


def test_plain_gsm7_fits_in_one_segment_up_to_160() -> None:
    assert sms_size("a" * 160).segments == 1
    assert sms_size("a" * 160).encoding == "GSM-7"
    assert sms_size("a" * 161).segments == 2


def test_long_gsm7_uses_153_per_part() -> None:
    assert sms_size("a" * 306).segments == 2
    assert sms_size("a" * 307).segments == 3


def test_extension_characters_count_twice() -> None:
    size = sms_size("€" * 80)
    assert (size.encoding, size.units, size.segments) == ("GSM-7", 160, 1)
    assert sms_size("€" * 81).segments == 2


def test_escape_pair_is_never_split_across_parts() -> None:
    # 152 plain septets then an escape pair: it cannot share the first part's last septet.
    text = "a" * 152 + "{" + "a" * 10
    assert sms_size(text).units == 164
    assert sms_size(text).segments == 2
    assert sms_size("a" * 152 + "{" + "a" * 152).segments == 3


def test_anything_outside_gsm7_goes_as_ucs2() -> None:
    assert sms_size("Répondez STOP").encoding == "GSM-7"  # é is in GSM-7
    arabic = "أرسل STOP لإلغاء الاشتراك"
    assert sms_size(arabic).encoding == "UCS-2"
    assert sms_size("ç" * 70).segments == 1
    assert sms_size("ç" * 71).segments == 2
    assert sms_size("ç" * 134).segments == 2
    assert sms_size("ç" * 135).segments == 3


def test_emoji_takes_two_code_units_and_is_not_split() -> None:
    assert sms_size("🙂" * 35).units == 70
    assert sms_size("🙂" * 35).segments == 1
    # 66 units then a surrogate pair: the pair moves to the next part.
    assert sms_size("ç" * 66 + "🙂" + "ç" * 60).segments == 2
    assert sms_size("ç" * 66 + "🙂" + "ç" * 67).segments == 3


def test_empty_text_still_costs_one_message() -> None:
    assert sms_size("").segments == 0
    assert segment_count("") == 1
