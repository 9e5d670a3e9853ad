"""Stand-ins for the external systems, speaking their real protocols over real HTTP (demo, tests, benchmarks)."""
