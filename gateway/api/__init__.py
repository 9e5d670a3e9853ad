"""HTTP routes, one module per area of the API, and the OpenAPI document they make.

May import every room below the application: pipeline, runtime, payments, sharing, access, audit, upstreams,
storage, http. Not: app, server, cli, demo."""
