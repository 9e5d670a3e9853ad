"""Who may call what: authentication of a signed request, callers, keys and grants,
the snapshot they are read from, quotas, nonces.

May import: storage, schemas, security. Not: http, api, audit, upstreams, payments, sharing, cli, demo."""
