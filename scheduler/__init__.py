"""orka-scheduler: places workload instances on Orka nodes.

Layers, each importing only those below it:
  cli, app          process wiring: config → trio.run → serve; terms of leadership
  leadership, etcd  etcd's election (lease, renew deadline) and a small etcd client
  api/              thin gRPC handlers (validate, convert, delegate)
  grpc_bridge       the only module that knows grpclib runs on asyncio
  cluster/          node registry, sessions, liveness deadlines
  agents            dialing Agents, Create/Signal attempts
  placement/        pure decisions: feasibility, ranking, reservations (no I/O, no trio)
  events            revisioned event log for the Controller
  store/            durable state: versioned encodings, SQLite or etcd (fenced writes)
  model, errors     domain dataclasses and refusals shared by all

Outside the layers: sim/ (simulated Agents and Controller, the demos), tooling that only
cli's `demo` command imports, when it runs.
"""
