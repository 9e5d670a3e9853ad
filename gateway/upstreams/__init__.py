"""The systems behind the gateway: registration of district upstreams, the live set of adapters on a node, breakers.

May import: storage, schemas, adapters, security. Not: http, api, access, audit, payments, sharing, cli, demo."""
