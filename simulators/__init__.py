"""Stand-ins for the external systems, speaking their real protocols over real HTTP (demo, tests, benchmarks).

They never import the gateway; the simulated platform (simulators/platform) uses only its public client."""
