"""orka-scheduler: places workload instances on Orka nodes.

Layers, each importing only those below it (tests/test_architecture.py checks this list):
  __main__                                   python -m scheduler
  cli                                        the command line
  admin, app                                 admin commands; wiring, terms of leadership
  lifecycle, leadership, observability, tls_setup, systemd, memory
                                             what follows each step of a node's life; etcd's
                                             election; metrics; TLS from config; sd_notify
  api                                        thin gRPC handlers (validate, convert, delegate)
  instances                                  placing, relaying, stopping instances
  agents, etcd                               calls to Agents; a small etcd client
  cluster                                    node registry, sessions, liveness deadlines
  events, placement, store                   event log; pure decisions; durable state
  grpc_bridge                                the only module that knows grpclib runs on asyncio
  grpc_listener                              what one peer may make a connection hold
  _compat, convert, pki, follow              library patches; protobuf <-> domain; dev PKI;
                                             clients following the leader
  config, security                           TOML config; TLS contexts, identities, authorization
  enum_maps, errors, model, names, logs, retention, throttle
                                             shared by all: domain types, refusals, rules

Outside the layers: sim/ (simulated Agents and Controller, the demos), tooling that only
cli's `demo` command imports, when it runs.
"""
