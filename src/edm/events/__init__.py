"""Tracking events: parsing each provider's webhooks, matching them to sub-tasks, applying
their facts. The raw request is always logged before any of this happens."""
