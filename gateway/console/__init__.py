"""The web console (/console): server-rendered pages for department officers, security officers, operators and
the security admin, with its own login (argon2 password, TOTP, lockout, idle expiry) and 三员分立."""
