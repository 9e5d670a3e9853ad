"""What tests share: the real services, gateways on real sockets, signed calls, deployments of processes.

Test modules import from here, never from conftest.py or from each other."""
