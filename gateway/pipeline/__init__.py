"""The request pipeline: one audited exchange (authenticate, authorize, call, minimize, record, answer), and the
refusals made before authentication.

May import: http, storage, access, audit, upstreams, payments, sharing, schemas, security, adapters.
Not: api, cli, demo."""
