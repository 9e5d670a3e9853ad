"""HTTP vocabulary every room speaks: problem+json answers with their stable codes, JSON bodies parsed with bounds,
and the client, scheme and authority behind trusted proxies.

A leaf: imports nothing else of gateway."""
