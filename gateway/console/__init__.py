"""The web console (/console): server-rendered pages for department officers, security officers, operators and
the security admin, with its own sign-in (argon2 password, TOTP, lockout, idle expiry), CSRF and 三员分立.

May import the rooms below the application: api (its actions run as their API twins), pipeline, runtime, sharing,
access, audit, storage, http. Not: app, server, cli, demo (those import it)."""
