"""Request signatures, payload encryption and the audit hash chain; imports nothing from `gateway`."""
