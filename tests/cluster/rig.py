"""The corosync test rig: real corosync daemons, one per network namespace, on a private bridge.

Layout (``N`` nodes, default three; node ids 1..N)::

    netns <prefix>-br : bridge "br0", one port "pN" per node
    netns <prefix>-nN : "eth0" (veth peer of "pN") with 198.18.0.N/24, "lo" up,
                        corosync -f under ``unshare -m`` with private /run and
                        /var/lib/corosync bind-mounted from the rig's temporary directory

Only addresses from 198.18.0.0/24 (RFC 2544 benchmarking space) are used, and only inside
the rig's own namespaces; the host's network is never touched. Every link is created
directly inside its namespace, so no interface ever appears in the host namespace.

Resource handling: ``CorosyncRig.close`` (also the exit of ``open_rig``) kills every
corosync the rig started (SIGTERM, then SIGKILL after a deadline), removes the libqb rings a
killed corosync leaves in /dev/shm (by its pid), deletes the namespaces (which deletes the
links) and the temporary directory. It is safe to call after a partial start.

Running code on a node: corosync's IPC uses abstract unix sockets, which belong to a network
namespace, so a client only needs the node's network namespace. ``call_in_node`` runs a
function in a fresh thread that has entered the node's network namespace (``setns`` affects
only the calling thread); ``run_trio_in_node`` runs an async function under ``trio.run`` in
such a thread. Several clients on one node need separate processes (CPG identifies a member
by node id and pid): ``spawn_in_node`` starts a Python module under ``ip netns exec``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import trio

T = TypeVar("T")

# <linux/sched.h>
CLONE_NEWNET = 0x40000000
# <linux/prctl.h>
PR_SET_PDEATHSIG = 1

SUBNET = "198.18.0"
PREFIX_LEN = 24
SHM_DIR = Path("/dev/shm")
REPO_ROOT = Path(__file__).resolve().parents[2]
_RIG_NETNS = re.compile(r"clogfs(\d+)-(?:br|n\d+)")

_libc = ctypes.CDLL(None, use_errno=True)


class RigError(RuntimeError):
    """The rig could not be set up, or a node did not reach the state asked for in time."""


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    if check and result.returncode != 0:
        raise RigError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
    return result


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the starting thread ends (survives exec)."""
    if _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        os._exit(127)


def reap_stale_rigs() -> None:
    """Delete namespaces of rigs whose test process died without cleaning up.

    Only names of the rig's own form (``clogfs<pid>-br``, ``clogfs<pid>-n<id>``) whose pid
    is no longer alive are touched.
    """
    for line in _run(("ip", "netns", "list")).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = _RIG_NETNS.fullmatch(name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            _run(("ip", "netns", "del", name), check=False)


def corosync_conf(node_ids: Sequence[int], *, state_dir: Path, logfile: Path) -> str:
    """Return one node's corosync.conf: knet without crypto, token 1000 ms, votequorum.

    Args:
        node_ids: every node of the cluster (the nodelist is the same on all of them).
        state_dir: this node's ``system.state_dir``.
        logfile: this node's ``logging.logfile``.
    """
    nodes = "".join(
        f"    node {{\n        ring0_addr: {SUBNET}.{n}\n        nodeid: {n}\n"
        f"        name: n{n}\n    }}\n"
        for n in node_ids
    )
    return (
        "totem {\n"
        "    version: 2\n"
        "    cluster_name: clogfs-test\n"
        "    transport: knet\n"
        "    token: 1000\n"
        "    crypto_cipher: none\n"
        "    crypto_hash: none\n"
        "}\n"
        f"nodelist {{\n{nodes}}}\n"
        "quorum {\n    provider: corosync_votequorum\n}\n"
        "logging {\n"
        "    to_stderr: no\n    to_syslog: no\n    to_logfile: yes\n"
        f"    logfile: {logfile}\n    timestamp: on\n"
        "}\n"
        "system {\n"
        "    sched_rr: no\n    move_to_root_cgroup: no\n"
        f"    state_dir: {state_dir}\n"
        "}\n"
    )


@dataclass
class Node:
    """One node of the rig."""

    node_id: int
    netns: str
    address: str
    root: Path  # private directory: corosync.conf, run/, lib/, state/, corosync.log
    process: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> Path:
        return self.root / "corosync.conf"

    @property
    def logfile(self) -> Path:
        return self.root / "corosync.log"


class CorosyncRig:
    """N corosync daemons in network namespaces joined by a bridge; see the module docstring."""

    def __init__(self, size: int = 3, *, prefix: str | None = None) -> None:
        self.prefix = prefix or f"clogfs{os.getpid()}"
        self.bridge_netns = f"{self.prefix}-br"
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self.nodes: dict[int, Node] = {
            n: Node(n, f"{self.prefix}-n{n}", f"{SUBNET}.{n}", self.tmp / f"n{n}")
            for n in range(1, size + 1)
        }
        self._created_netns: list[str] = []
        self._killed_pids: set[int] = set()

    # -- network -----------------------------------------------------------------------------

    def create_network(self) -> None:
        """Create the bridge namespace, the node namespaces and their veth links."""
        self._add_netns(self.bridge_netns)
        br = ("ip", "-n", self.bridge_netns)
        _run((*br, "link", "add", "br0", "type", "bridge"))
        _run((*br, "link", "set", "br0", "up"))
        for node in self.nodes.values():
            self._add_netns(node.netns)
            ns = ("ip", "-n", node.netns)
            _run((*ns, "link", "set", "lo", "up"))
            port = f"p{node.node_id}"
            _run(
                (
                    *ns,
                    "link", "add", "eth0", "type", "veth",
                    "peer", "name", port, "netns", self.bridge_netns,
                )
            )  # fmt: skip
            _run((*br, "link", "set", port, "master", "br0"))
            _run((*br, "link", "set", port, "up"))
            _run((*ns, "addr", "add", f"{node.address}/{PREFIX_LEN}", "dev", "eth0"))
            _run((*ns, "link", "set", "eth0", "up"))

    def _add_netns(self, name: str) -> None:
        _run(("ip", "netns", "add", name))
        self._created_netns.append(name)

    def set_link(self, node_id: int, *, up: bool) -> None:
        """Connect or disconnect a node: its bridge port goes up or down (isolation)."""
        state = "up" if up else "down"
        _run(("ip", "-n", self.bridge_netns, "link", "set", f"p{node_id}", state))

    # -- corosync ----------------------------------------------------------------------------

    def start_corosync(self, node_id: int) -> None:
        """Write the node's configuration and start its corosync in the foreground.

        Call it from a thread that outlives the daemon (the main thread): corosync gets
        SIGKILL when the thread that started it ends, so a test process that dies without
        cleaning up leaves no corosync running.
        """
        node = self.nodes[node_id]
        for sub in ("run", "lib", "state"):
            (node.root / sub).mkdir(parents=True, exist_ok=True)
        node.conf.write_text(
            corosync_conf(list(self.nodes), state_dir=node.root / "state", logfile=node.logfile)
        )
        script = (
            'mount --bind "$1/run" /run && mount --bind "$1/lib" /var/lib/corosync && '
            'exec corosync -f -c "$1/corosync.conf"'
        )
        with (node.root / "stderr.log").open("wb") as stderr:
            node.process = subprocess.Popen(
                ["ip", "netns", "exec", node.netns, "unshare", "-m", "--propagation", "private",
                 "sh", "-c", script, "corosync-rig", str(node.root)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                preexec_fn=_die_with_parent,
            )  # fmt: skip

    def corosync_pid(self, node_id: int) -> int:
        """The pid of the node's corosync (``exec`` keeps the pid of the launcher chain)."""
        process = self.nodes[node_id].process
        if process is None:
            raise RigError(f"corosync of node {node_id} was not started")
        return process.pid

    def kill_corosync(self, node_id: int) -> None:
        """SIGKILL a node's corosync (a node crash) and reap it."""
        node = self.nodes[node_id]
        if node.process is None:
            return
        self._killed_pids.add(node.process.pid)
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(timeout=10)
        node.process = None
        self._remove_rings()

    def stop_corosync(self, node_id: int, *, timeout: float = 15.0) -> None:
        """Stop a node's corosync with SIGTERM (an orderly shutdown), SIGKILL after ``timeout``."""
        node = self.nodes[node_id]
        if node.process is None:
            return
        node.process.send_signal(signal.SIGTERM)
        try:
            node.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._killed_pids.add(node.process.pid)
            node.process.kill()
            node.process.wait(timeout=10)
        node.process = None
        self._remove_rings()

    def quorum_status(self, node_id: int) -> dict[str, str] | None:
        """``corosync-quorumtool -s`` inside the node as ``{field: value}``; None if no answer."""
        result = _run(
            ("ip", "netns", "exec", self.nodes[node_id].netns, "corosync-quorumtool", "-s"),
            check=False,
        )
        if not result.stdout:
            return None
        fields: dict[str, str] = {}
        for line in result.stdout.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        return fields

    def wait_until(
        self, predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.1
    ) -> None:
        """Poll ``predicate`` until true; raise ``RigError`` naming ``what`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not predicate():
            for node in self.nodes.values():
                if node.process is not None and node.process.poll() is not None:
                    raise RigError(
                        f"corosync of node {node.node_id} exited: {self.log(node.node_id)}"
                    )
            if time.monotonic() > deadline:
                raise RigError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(interval)

    def wait_formed(self, node_ids: Sequence[int] | None = None, *, timeout: float = 30.0) -> None:
        """Wait until each of ``node_ids`` (default all) is quorate with all of them as members."""
        ids = list(node_ids) if node_ids is not None else list(self.nodes)

        def formed() -> bool:
            for n in ids:
                status = self.quorum_status(n)
                if status is None or status.get("Quorate") != "Yes":
                    return False
                if status.get("Total votes") != str(len(ids)):
                    return False
            return True

        self.wait_until(formed, timeout=timeout, what=f"nodes {ids} to form a quorate cluster")

    def wait_quorate(self, node_id: int, quorate: bool, *, timeout: float = 30.0) -> None:
        """Wait until corosync-quorumtool on ``node_id`` reports ``quorate``."""

        def reached() -> bool:
            status = self.quorum_status(node_id)
            return status is not None and (status.get("Quorate") == "Yes") == quorate

        self.wait_until(reached, timeout=timeout, what=f"node {node_id} quorate={quorate}")

    def log(self, node_id: int) -> str:
        """The tail of a node's corosync log and stderr, for failure messages."""
        node = self.nodes[node_id]
        parts = []
        for path in (node.logfile, node.root / "stderr.log"):
            with contextlib.suppress(OSError):
                parts.append(path.read_text(errors="replace")[-2000:])
        return "\n".join(parts)

    def _remove_rings(self) -> None:
        """Remove /dev/shm files left by corosyncs this rig killed (libqb names carry the pid)."""
        for pid in self._killed_pids:
            for path in (*SHM_DIR.glob(f"qb-{pid}-*"), *SHM_DIR.glob(f"qb-corosync-{pid}-*")):
                with contextlib.suppress(FileNotFoundError):
                    if path.is_dir():
                        shutil.rmtree(path)
                    else:
                        path.unlink()

    # -- running code on a node --------------------------------------------------------------

    def call_in_netns(self, netns: str, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in a new thread that has entered the network namespace ``netns``."""
        return NetnsCall(netns, fn, args).start().result()

    def call_in_node(self, node_id: int, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in a new thread inside the node's network namespace."""
        return self.call_in_netns(self.nodes[node_id].netns, fn, *args)

    def run_trio_in_node(
        self, node_id: int, async_fn: Callable[..., Awaitable[T]], *args: Any
    ) -> T:
        """Run ``trio.run(async_fn, *args)`` in the node's network namespace (a new thread)."""
        result: T = self.call_in_node(node_id, trio.run, async_fn, *args)
        return result

    def start_trio_in_node(
        self, node_id: int, async_fn: Callable[..., Awaitable[T]], *args: Any
    ) -> NetnsCall[T]:
        """Start ``trio.run(async_fn, *args)`` in the node's namespace; ``.result()`` waits."""
        return NetnsCall(self.nodes[node_id].netns, trio.run, (async_fn, *args)).start()

    def run_trio_in_nodes(
        self, calls: dict[int, tuple[Callable[..., Awaitable[Any]], tuple[Any, ...]]]
    ) -> dict[int, Any]:
        """Run one ``trio.run`` per node at the same time, each in its node's namespace.

        Args:
            calls: ``{node_id: (async_fn, args)}``.

        Returns:
            ``{node_id: result}``. The first exception (in node order) is re-raised after
            every thread has finished.
        """
        threads = {
            node_id: NetnsCall(self.nodes[node_id].netns, trio.run, (fn, *args)).start()
            for node_id, (fn, args) in calls.items()
        }
        for thread in threads.values():
            thread.join()
        return {node_id: thread.result() for node_id, thread in threads.items()}

    def spawn_in_node(
        self, node_id: int, module: str, *args: str, stdin: int | None = subprocess.PIPE
    ) -> subprocess.Popen[str]:
        """Start ``python -m module args`` in the node's network namespace (stdout piped)."""
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        return subprocess.Popen(
            ["ip", "netns", "exec", self.nodes[node_id].netns, sys.executable, "-m", module,
             *args],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO_ROOT,
        )  # fmt: skip

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, *, timeout: float = 30.0) -> None:
        """Create the network, start every corosync and wait until the cluster is formed."""
        reap_stale_rigs()
        self.create_network()
        for node_id in self.nodes:
            self.start_corosync(node_id)
        self.wait_formed(timeout=timeout)

    def close(self) -> None:
        """Tear everything down (see the module docstring); safe after a partial start."""
        for node_id in self.nodes:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self.stop_corosync(node_id, timeout=10.0)
        self._remove_rings()
        for name in reversed(self._created_netns):
            _run(("ip", "netns", "del", name), check=False)
        self._created_netns.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


class NetnsCall(Generic[T]):
    """A thread that enters a network namespace, runs one call and keeps its outcome."""

    def __init__(self, netns: str, fn: Callable[..., T], args: Sequence[Any]) -> None:
        self._path = f"/run/netns/{netns}"
        self._fn = fn
        self._args = args
        self._outcome: list[T] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._body, name=f"rig-{netns}", daemon=True)

    def _body(self) -> None:
        try:
            fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            self._outcome.append(self._fn(*self._args))
        except BaseException as exc:  # re-raised in the caller's thread by result()
            self._error = exc

    def start(self) -> NetnsCall[T]:
        self._thread.start()
        return self

    def join(self) -> None:
        self._thread.join()

    def result(self) -> T:
        """Wait for the call and return its result, or raise its exception."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._outcome[0]


@contextlib.contextmanager
def open_rig(size: int = 3) -> Iterator[CorosyncRig]:
    """A started rig of ``size`` nodes, torn down completely on exit."""
    rig = CorosyncRig(size)
    try:
        rig.start()
        yield rig
    finally:
        rig.close()
