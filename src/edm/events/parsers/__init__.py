"""One module per provider's webhook format, each behind `WebhookParser`."""
