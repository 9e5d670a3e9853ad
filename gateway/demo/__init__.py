"""The demo: simulators started beside a gateway, demo callers and grants, demo sharing data, the platform's demo run.

May import any room of gateway, and simulators."""
