"""The HTTP side of edm: webhooks, unsubscribe links, health. Handlers call domain
functions and never write SQL themselves."""
