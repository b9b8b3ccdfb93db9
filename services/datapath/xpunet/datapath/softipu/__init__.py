"""softipu: the software xPU, a P4Runtime server that keeps table state in dicts.

It makes the P4Runtime path real in development and tests, and backs nodes
without hardware.  `server.SoftIpu` is the gRPC service; `state.DeviceState`
the tables; `arbitration` the primary/backup logic; `main` the CLI.
"""
