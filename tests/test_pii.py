"""pii.scrub: each kind replaced with its placeholder and count, checksums verified, technical text left alone."""

from __future__ import annotations

import pytest

from nomoat.dataset.pii import scrub


@pytest.mark.parametrize(
    ("text", "kind", "placeholder"),
    [
        ("jane.doe@example.com", "email", "[EMAIL]"),
        ("bob+lists@mail.example.co.uk", "email", "[EMAIL]"),
        ("4111 1111 1111 1111", "card", "[CARD]"),
        ("5500-0000-0000-0004", "card", "[CARD]"),
        ("378282246310005", "card", "[CARD]"),
        ("3782 822463 10005", "card", "[CARD]"),
        ("GB82 WEST 1234 5698 7654 32", "iban", "[IBAN]"),
        ("DE89370400440532013000", "iban", "[IBAN]"),
        ("192.168.1.20", "ip", "[IP]"),
        ("2001:db8::1", "ip", "[IP]"),
        ("fe80::1ff:fe23:4567:890a", "ip", "[IP]"),
        ("2001:0db8:0000:0000:0000:ff00:0042:8329", "ip", "[IP]"),
        ("(555) 123-4567", "phone", "[PHONE]"),
        ("555-123-4567", "phone", "[PHONE]"),
        ("555.123.4567", "phone", "[PHONE]"),
        ("020 7946 0958", "phone", "[PHONE]"),
        ("+44 20 7946 0958", "phone", "[PHONE]"),
        ("+44 (0)20 7946 0958", "phone", "[PHONE]"),
        ("+1-202-555-0143", "phone", "[PHONE]"),
        ("+4915112345678", "phone", "[PHONE]"),
    ],
)
def test_each_kind_is_replaced(text: str, kind: str, placeholder: str) -> None:
    assert scrub(f"see {text} here.") == (f"see {placeholder} here.", {kind: 1})


def test_email_in_angle_brackets_mailto_and_git_remote() -> None:
    text = "From: Jane <jane@example.org>, [mail](mailto:ops@example.com), remote git@github.com:foo/bar.git"
    clean, counts = scrub(text)
    assert clean == "From: Jane <[EMAIL]>, [mail](mailto:[EMAIL]), remote [EMAIL]:foo/bar.git"
    assert counts == {"email": 3}


@pytest.mark.parametrize("text", ["user@host", "run `ssh admin@localhost`", "icon@2x.png", "npm i left-pad@1.3.0"])
def test_email_needs_a_dot_tld(text: str) -> None:
    assert scrub(text) == (text, {})


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1112",  # Luhn fails
        "1234567890123456",  # Luhn fails
        "5500-0000-0000-0005",
        "the repo has 4817 commits and 1234567890123 objects",
        "4111 1111 1111 1111 2222 3333",  # a run of number groups, not a card
    ],
)
def test_card_kept_when_luhn_fails(text: str) -> None:
    assert scrub(text) == (text, {})


@pytest.mark.parametrize(
    "text",
    [
        "GB82 WEST 1234 5698 7654 33",  # last digit changed
        "GB83 WEST 1234 5698 7654 32",  # check digits changed
        "DE89370400440532013001",
        "DE88370400440532013000",
    ],
)
def test_iban_kept_when_mod97_fails(text: str) -> None:
    assert scrub(text) == (text, {})


def test_iban_followed_by_a_word_or_group() -> None:
    assert scrub("IBAN AT61 1904 3002 3457 3201 EUR 100") == ("IBAN [IBAN] EUR 100", {"iban": 1})


@pytest.mark.parametrize(
    "text",
    [
        "1.2.3",
        "2.43.0",
        "1.2.3.4.5",
        "v1.2.3.4",
        "10.0.19045.3803",
        "2026-03-14",
        "14.03.2026",
        "10:00",
        "10:00:00",
        "2026-03-14T10:00:00Z",
        "2026-03-14T10:00:00+01:00",
        "e83c5163316f89bfbde7d9ab23ca2e25604af290",
        "e83c516",
        "42",
        "port 8080",
        "localhost:8080",
        "#12345",
        "100-200",
        "pages 100-200 and 300-400",
        "sizes 128 256 1024 2048",
        "12345678",  # 8 digits, no +
        "+1 555",  # + but too few digits
        "std::vector<int>",
        "lst[::2] and lst[1::2]",
        "256.1.1.1",
        "2019 2020 2021 2022",
    ],
)
def test_technical_tokens_are_not_pii(text: str) -> None:
    assert scrub(text) == (text, {})


def test_paragraph_of_planted_data() -> None:
    planted = [
        "jane.doe@example.com",
        "bob@mail.example.org",
        "+44 20 7946 0958",
        "(555) 123-4567",
        "4111 1111 1111 1111",
        "378282246310005",
        "GB82 WEST 1234 5698 7654 32",
        "192.168.10.20",
        "fe80::1ff:fe23:4567:890a",
    ]
    text = (
        f"Contact {planted[0]} or <{planted[1]}>. Call {planted[2]} or {planted[3]} after 10:00.\n"
        f"Pay with {planted[4]} or {planted[5]}; refunds go to IBAN {planted[6]}.\n"
        f"The server at {planted[7]}:8080 and its link-local address {planted[8]} run version 2.43.0."
    )
    clean, counts = scrub(text)
    for value in planted:
        assert value not in clean
    assert counts == {"email": 2, "phone": 2, "card": 2, "iban": 1, "ip": 2}
    assert clean == (
        "Contact [EMAIL] or <[EMAIL]>. Call [PHONE] or [PHONE] after 10:00.\n"
        "Pay with [CARD] or [CARD]; refunds go to IBAN [IBAN].\n"
        "The server at [IP]:8080 and its link-local address [IP] run version 2.43.0."
    )


TECHNICAL = """\
Git 2.43.0 was released on 2023-11-20; the next release is planned for 14.03.2026 at 10:00 UTC.
Run `git clone --depth=1 https://example.com/repo.git` and then `git reset --hard HEAD~3`.
Commit e83c5163316f89bfbde7d9ab23ca2e25604af290 (short: e83c516) fixed issue #12345, see also #987.
The dev server listens on localhost:8080; use :8080 for the API and :5432 for Postgres.
Retries back off between 100-200 ms; the log line read 2026-03-14T10:00:00Z and 10:30:15.
In C++ call std::vector<int>::size(); in Python use lst[::2] or lst[1::2] with numpy 1.26.4.
Build 10.0.19045.3803 shipped 4817 commits over 1234567890123 ns, copyright 2019-2024.
"""


def test_technical_paragraph_is_unchanged() -> None:
    assert scrub(TECHNICAL) == (TECHNICAL, {})


def test_idempotent() -> None:
    text = (
        "mail jane@example.com, call +1-202-555-0143 or 020 7946 0958, card 5500-0000-0000-0004, "
        "IBAN DE89370400440532013000, hosts 10.0.0.1 and 2001:db8::1.\n" + TECHNICAL
    )
    once, counts = scrub(text)
    assert counts == {"email": 1, "phone": 2, "card": 1, "iban": 1, "ip": 2}
    assert scrub(once) == (once, {})


def test_empty_and_clean_text() -> None:
    assert scrub("") == ("", {})
    assert scrub("nothing personal here") == ("nothing personal here", {})
