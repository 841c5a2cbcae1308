"""The REST API's resources under `/api`, one module each, on the CLI's domain modules."""
