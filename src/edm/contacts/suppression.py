"""Taking a contact off suppression: the one way back to `active`, asked for by name.

An import never reactivates (see `edm.contacts.merge`): an operator does, here, for
addresses they name, knowing why each was suppressed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sqlalchemy import Engine, select, update

from edm.contacts.addresses import valid_email
from edm.contacts.merge import ACTIVE
from edm.db.models import Contact


@dataclass(frozen=True)
class Reactivated:
    email: str
    was: str  # the status it had
    reason: str | None  # why it had it


@dataclass
class Reactivation:
    reactivated: list[Reactivated] = field(default_factory=list)
    already_active: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # as given: no contact has them


def reactivate(engine: Engine, addresses: list[str]) -> Reactivation:
    """Set the named contacts back to `active` and clear their reason, in one transaction.

    Unknown addresses are reported, not fatal: the known ones are still reactivated.
    """
    wanted = {address: valid_email(address) or address.strip().lower() for address in addresses}
    result = Reactivation()
    with engine.begin() as conn:
        found = {
            row.email: row
            for row in conn.execute(
                select(Contact.id, Contact.email, Contact.status, Contact.status_reason)
                .where(Contact.email.in_(set(wanted.values())))
                .with_for_update()
            )
        }
        done: set[str] = set()
        for given, email in wanted.items():
            row = found.get(email)
            if row is None:
                result.unknown.append(given)
            elif row.status == ACTIVE or email in done:
                result.already_active.append(email)
            else:
                done.add(email)
                result.reactivated.append(Reactivated(email, row.status, row.status_reason))
        if done:
            conn.execute(
                update(Contact)
                .where(Contact.email.in_(done))
                .values(status=ACTIVE, status_reason=None, updated_at=time.time())
            )
    return result
