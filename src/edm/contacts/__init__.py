"""Contacts: the people a task sends to, imported from CSV files.

`importer` runs an import, `csvfile` reads the file, `rows` checks each row, `merge` holds
the rules for what a row does to a contact, `writer` and `store` write contacts, and
`suppression` brings a suppressed contact back.
"""

from edm.contacts.addresses import InvalidAddress, normalise_email, valid_email
from edm.contacts.csvfile import FileProblem
from edm.contacts.importer import ImportOptions, ImportSummary, import_csv
from edm.contacts.rows import Rejection
from edm.contacts.suppression import Reactivation, reactivate
from edm.contacts.writer import add_contacts

__all__ = [
    "FileProblem",
    "ImportOptions",
    "ImportSummary",
    "InvalidAddress",
    "Reactivation",
    "Rejection",
    "add_contacts",
    "import_csv",
    "normalise_email",
    "reactivate",
    "valid_email",
]
