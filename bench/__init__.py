"""Load harness of the gateway and its scenarios."""
