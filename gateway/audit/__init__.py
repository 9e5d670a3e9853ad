"""The tamper-evident audit log: writer and committer, verification, search, export and archive files,
the key ring and node keys.

May import: storage, schemas, security. Not: http, api, access, upstreams, payments, sharing, cli, demo."""
