"""The 共享为常态 workflow: catalog items, sharing requests and their decisions, deadlines, escalation, grants.

May import: access, audit, storage, http, schemas. Not: pipeline, runtime, api, cli, demo."""
