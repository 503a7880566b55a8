"""The ``clogfsd`` command line: parse options, set up logging, run the daemon."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from clogfs import __version__
from clogfs.daemon import DaemonConfig, ExitCode, StartupError, run_daemon

log = logging.getLogger("clogfs")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n")


def _port(text: str) -> int:
    value = int(text, 10)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"not a netlink port id: {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the tests that keep the man page honest)."""
    p = _Parser(
        prog="clogfsd",
        description="Serve the device-mapper userspace dirty log (dm-log-userspace) for "
        "clustered-core and clustered-disk mirror logs. Runs in the foreground.",
    )
    p.add_argument(
        "--protocol",
        choices=("auto", "ulog", "take5"),
        default="auto",
        help="kernel wire format: mainline dm_ulog_request (ulog), the 2009 take-5 "
        "dm_clog_request (take5), or detect per message (auto, the default)",
    )
    p.add_argument(
        "--kernel-port",
        type=_port,
        default=0,
        metavar="PORTID",
        help="accept requests only from this netlink port id and reply to it "
        "(kernel emulators); default 0, the kernel",
    )
    mount = p.add_mutually_exclusive_group()
    mount.add_argument(
        "--mount",
        type=Path,
        default=Path("/run/clogfs"),
        metavar="DIR",
        help="mount the read-only view here (default /run/clogfs)",
    )
    mount.add_argument("--no-mount", action="store_true", help="do not mount the view")
    p.add_argument(
        "--mount-allow-other",
        action="store_true",
        help="let users other than root read the view (FUSE allow_other)",
    )
    p.add_argument(
        "--cluster",
        choices=("none", "corosync"),
        default="none",
        help="none: a single host (default); corosync: share logs with the other "
        "hosts through corosync CPG (corosync must be running)",
    )
    p.add_argument(
        "--no-quorum",
        action="store_true",
        help="cluster mode: confirm FLUSH even while this node is not quorate",
    )
    p.add_argument(
        "--lock-file",
        type=Path,
        default=Path("/run/clogfsd.lock"),
        metavar="PATH",
        help="single-instance lock (default /run/clogfsd.lock)",
    )
    p.add_argument(
        "--runtime-dir",
        type=Path,
        default=Path("/run/clogfsd"),
        metavar="DIR",
        help="where private log-device nodes are made (default /run/clogfsd)",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        metavar="LEVEL",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="DEBUG, INFO (default), WARNING or ERROR",
    )
    p.add_argument(
        "--debug",
        action="append",
        default=[],
        metavar="CATEGORY",
        help="debug output for one subsystem logger, e.g. service, netlink.endpoint, "
        "disklog.device (repeatable)",
    )
    p.add_argument("--version", action="version", version=f"clogfsd {__version__}")
    return p


def setup_logging(level: str, debug: Sequence[str]) -> None:
    """Log to stderr (systemd's journal captures it); per-subsystem debug chosen at run time.

    A ``--debug`` category's logger is set to DEBUG; records propagate to the root handler
    whatever the root level, so only that subsystem becomes verbose.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for category in debug:
        name = category if category.startswith("clogfs") else f"clogfs.{category}"
        logging.getLogger(name).setLevel(logging.DEBUG)


def _startup_error(exc: BaseException) -> StartupError | None:
    """The StartupError inside ``exc`` (maybe wrapped in exception groups), if any."""
    if isinstance(exc, StartupError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _startup_error(inner)
            if found is not None:
                return found
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``clogfsd``; returns the exit code."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.debug)
    config = DaemonConfig(
        protocol=args.protocol,
        kernel_port=args.kernel_port,
        mount=None if args.no_mount else args.mount,
        mount_allow_other=args.mount_allow_other,
        cluster=args.cluster,
        enforce_quorum=not args.no_quorum,
        lock_file=args.lock_file,
        runtime_dir=args.runtime_dir,
        debug=tuple(args.debug),
    )
    try:
        return int(trio.run(run_daemon, config, strict_exception_groups=True))
    except KeyboardInterrupt:  # SIGINT before the signal task took it over
        return int(ExitCode.OK)
    except BaseException as exc:
        startup = _startup_error(exc)
        if startup is not None:
            log.error("%s", startup)
            return int(startup.code)
        if not isinstance(exc, Exception | BaseExceptionGroup):
            raise
        log.critical("clogfsd stopped by an unexpected error", exc_info=exc)
        return int(ExitCode.ERROR)


if __name__ == "__main__":
    sys.exit(main())
