"""Exactly-once treasury payments: idempotency keys, payment intents before the voucher is sent, outcomes after.

May import: storage, access, audit, upstreams, schemas, adapters, security. Not: http, api, cli, demo."""
