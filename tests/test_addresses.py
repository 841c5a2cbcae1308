"""The plain-address fast path gives exactly email-validator's answer, or leaves it the
question: whatever it accepts, email-validator accepts, in the same normal form."""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from edm.contacts.addresses import _plain, normalise_email

# Characters where the rules have edges: every ASCII class the grammar names, the
# separators, look-alikes of ASCII letters (Kelvin sign, long s, dotless i, full-width),
# combining marks and spaces.
TRICKY = (
    "aZk09._-+'!#$%&*/=?^`{|}~@\"<>()[]\\,;: \t"
    "\u212a\u017f\u0131\uff21\uff0e\uff20\u0301\u00a0\u2028\u00e9"
)
LABELS = st.sampled_from(
    [
        "example",
        "com",
        "xn--bcher-kva",
        "ab--cd",
        "a-b",
        "-a",
        "a-",
        "local",
        "test",
        "arpa",
        "localhost",
        "invalid",
        "onion",
        "c1",
        "1",
        "A" * 63,
        "b" * 64,
        "co.uk",
        "",
    ]
)


def validator(address: str) -> str | None:
    try:
        return validate_email(address.strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError:
        return None


def agrees(address: str) -> None:
    fast = _plain(address.strip())
    if fast is not None:
        assert validator(address) == fast, address


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet=TRICKY, max_size=30))
def test_any_text(address: str) -> None:
    agrees(address)


@settings(max_examples=3000, deadline=None)
@given(
    st.text(alphabet=TRICKY, min_size=1, max_size=12),
    st.lists(LABELS | st.text(alphabet="aZ09-.\u212a", max_size=8), min_size=1, max_size=4),
    st.integers(0, 250),
)
def test_address_shaped_text(local: str, labels: list[str], padding: int) -> None:
    agrees(f"{local}@{'.'.join(labels)}")
    agrees(f"{'x' * padding}@{'.'.join(labels)}")


def test_edges() -> None:
    for address in [
        "Ann@Example.COM",
        "info@example.org",
        "a@b.c1",
        "a@localhost",
        "x@y.local",
        "x@y.test",
        "a..b@c.com",
        ".a@c.com",
        "a@b-.com",
        "a@xn--bcher-kva.com",
        "a@ab--cd.com",
        "a@" + "b" * 63 + ".com",
        "a@" + "b" * 64 + ".com",
        "x" * 245 + "@ex.com",  # 252 characters
        "x" * 248 + "@ex.com",  # 255
        "a@\u212aelvin.com",
        "  a@b.com ",
    ]:
        agrees(address)
    assert _plain("a@" + ".".join(["b" * 60] * 5) + ".com") is None  # over 253
    assert normalise_email(" Ann@Example.COM ") == "ann@example.com"
