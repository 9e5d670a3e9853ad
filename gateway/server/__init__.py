"""The serving process: the guarded HTTP protocol, several workers on one socket, the GC settings, the data-dir lock.

May import: settings, storage. Not the request pipeline's rooms."""
