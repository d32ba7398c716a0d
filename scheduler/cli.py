"""`orka-scheduler`: argument parsing → config → trio.run(serve). One function per command."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

import trio

from . import admin, demo, logs
from .config import Config, ConfigError

log = logging.getLogger("scheduler")

INSECURE_WARNING = (
    "RUNNING WITHOUT TLS (--insecure): every connection is plaintext and no identity is "
    "checked; any client can join as any node and schedule anything. Use only for "
    "development or old Orka components that cannot speak TLS."
)


def _load_config(path: str | None) -> Config:
    return Config.from_toml(path) if path else Config()


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        config = _load_config(args.config)
    except ConfigError as err:
        print(f"orka-scheduler: bad configuration: {err.in_file(args.config)}", file=sys.stderr)
        return 2
    logs.setup(config.observability.log_level, config.observability.log_format)
    from .app import serve
    from .tls_setup import reload_on_sighup, server_tls

    if args.insecure:
        log.warning(INSECURE_WARNING)
        ssl_context = authorize = agent_ssl = None
    else:
        from . import pki, security

        try:
            ssl_context, authorize, agent_ssl = server_tls(config)
        except ConfigError as err:  # a [tls] file missing, mismatched or expired
            print(f"orka-scheduler: bad configuration: {err.in_file(args.config)}",
                  file=sys.stderr)
            return 2
        except (security.TlsSetupError, pki.PkiError) as err:
            print(f"orka-scheduler: cannot set up TLS: {err}", file=sys.stderr)
            return 2

    async def main() -> None:
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_wait_for_signals, shutdown)
            # SIGHUP (systemctl reload) rotates certificates; without TLS it is logged and ignored.
            nursery.start_soon(reload_on_sighup, config, ssl_context, agent_ssl)
            await serve(config, ssl_context=ssl_context, authorize=authorize,
                        agent_ssl=agent_ssl, shutdown=shutdown)
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
    from .tls_setup import configured_files

    try:
        configured_files(Config.from_toml(args.file))  # the same check `serve` makes
    except ConfigError as err:
        print(err.in_file(args.file), file=sys.stderr)
        return 1
    print(f"{args.file}: ok")
    return 0


def cmd_certs_init(args: argparse.Namespace) -> int:
    from . import pki

    try:
        paths = pki.init_pki(Path(args.directory), trust_domain=args.trust_domain,
                             agents=tuple(args.agent), controllers=tuple(args.controller))
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
    print(f"issued {args.kind} {args.name}: {paths}")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="orka-scheduler",
                                  description="The Scheduler of the Orka cluster orchestrator.")
    commands = top.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the scheduler")
    serve.add_argument("--config", metavar="FILE", help="TOML configuration (default: built-in defaults)")
    serve.add_argument("--insecure", action="store_true",
                       help="plaintext gRPC, identities unchecked (development, old components)")
    serve.set_defaults(func=cmd_serve)

    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file")
    check.set_defaults(func=cmd_check_config)

    admin.add_commands(commands)
    demo.add_command(commands)

    certs = commands.add_parser("certs", help="development PKI").add_subparsers(dest="certs", required=True)
    init = certs.add_parser("init", help="create a CA and certificates in DIR")
    init.add_argument("directory", metavar="DIR")
    init.add_argument("--agent", action="append", default=[], metavar="ID", help="an Agent's node id (repeatable)")
    init.add_argument("--controller", action="append", default=["controller"], metavar="NAME")
    init.add_argument("--trust-domain", default="orka.local")
    init.set_defaults(func=cmd_certs_init)
    issue = certs.add_parser("issue", help="issue one more certificate from DIR's CA")
    issue.add_argument("kind", choices=["agent", "controller"])
    issue.add_argument("name", metavar="ID")
    issue.add_argument("--dir", dest="directory", required=True, metavar="DIR")
    issue.set_defaults(func=cmd_certs_issue)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
