"""How the worker classifies what one provider call came to, whatever the provider raises."""

from __future__ import annotations

import asyncio

import pytest

from edm.config import Settings
from edm.providers.base import OutgoingMessage, Provider, SendResult, TransientError
from edm.scheduler.transitions import Outcome
from edm.scheduler.worker import ServiceInfo, ServiceWorker

MESSAGE = OutgoingMessage(
    sub_task_id=7,
    task_id=1,
    idempotency_key="k" * 32,
    to_email="a@example.com",
    to_name=None,
    from_addr="news@example.com",
    subject="s",
    html=None,
    text="x",
)


class Scripted(Provider):
    """Answers, raises or hangs, as told."""

    name = "scripted"

    def __init__(self, answer: BaseException | float | None) -> None:
        super().__init__("svc", {})
        self.answer = answer

    async def send(self, message: OutgoingMessage) -> SendResult:
        if isinstance(self.answer, BaseException):
            raise self.answer
        if isinstance(self.answer, float):
            await asyncio.sleep(self.answer)
        return SendResult(provider_message_id="mid-1")


def outcome_of(answer: BaseException | float | None, lease_seconds: float = 30.0) -> Outcome:
    worker = ServiceWorker(
        None,  # type: ignore[arg-type]  # a call never touches the database
        Settings(lease_seconds=lease_seconds),
        ServiceInfo(1, "svc", "scripted", {}, 1),
        Scripted(answer),
    )
    [outcome] = asyncio.run(worker._send_all([(MESSAGE, 1)]))
    return outcome


def test_an_accepted_call_is_sent_with_the_providers_id() -> None:
    outcome = outcome_of(None)
    assert (outcome.kind, outcome.message_id) == ("sent", "mid-1")


@pytest.mark.parametrize(
    ("raised", "kind", "reason"),
    [
        (TransientError("try later", code="421"), "transient", "try later (code 421)"),
        (TimeoutError(), "unknown", "the provider's own time limit ran out"),
        (RuntimeError("bug"), "unknown", "provider raised RuntimeError: bug"),
    ],
)
def test_what_a_provider_raises_decides_the_outcome(
    raised: BaseException, kind: str, reason: str
) -> None:
    outcome = outcome_of(raised)
    assert outcome.kind == kind
    assert reason in (outcome.error or "")


def test_a_call_past_the_time_limit_is_unknown() -> None:
    outcome = outcome_of(5.0, lease_seconds=0.25)  # the limit is 0.8 x the lease: 0.2 s
    assert outcome.kind == "unknown"
    assert "no answer from the provider within 0.2s" in (outcome.error or "")
