"""One module per external system behind one interface: the gateway calls `Adapter.invoke`, no protocol details."""
