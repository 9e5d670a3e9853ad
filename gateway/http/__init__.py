"""The request pipeline: one audited exchange, problem+json answers, body parsing, proxies,
refusals before authentication.

May import: storage, access, audit, upstreams, payments, schemas, security, adapters. Not: api, cli, demo, server."""
