"""Tooling, not the scheduler: simulated Agents and Controller, the demo, a local etcd.

Plain asyncio and grpclib, never trio. The core never imports this package; only `cli`'s
`demo` command does, when it runs. The benchmarks (`bench/`) and the tests use it too.
  simulator        simulated Agents (`python -m scheduler.sim.simulator agents|controller`)
  sim_controller   a simulated Controller: Schedule, Watch, the placement report
  demo, demo_ha    `orka-scheduler demo` and `demo --ha`
  local_etcd       a loopback etcd member for `demo --ha`, the benchmarks and the tests
  signals          stop a tool on SIGINT/SIGTERM
"""
