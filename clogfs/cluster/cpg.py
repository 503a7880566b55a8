"""The corosync binding: cffi (ABI mode) over libcpg.so.4 and libquorum.so.5, driven by trio.

This is the only module that touches cffi. It declares the parts of corosync's public headers
clogfs uses (``corosync/corotypes.h``, ``corosync/cpg.h``, ``corosync/quorum.h``, corosync 3.1),
loads the libraries on first use, and offers:

- ``open_cpg_group(name)``: a joined CPG group. ``CpgGroup.send`` multicasts with AGREED order
  (``CpgGroup.try_send``: one synchronous attempt); ``CpgGroup.receive`` (or ``async for``)
  yields ``Deliver``, ``ConfChange`` and ``TotemChange`` events in corosync's total order, this
  member's own messages included.
- ``QuorumHandle``: the low-level quorum service handle used by ``clogfs.cluster.quorum``.

How corosync is driven (spec/cluster.md): the handle's fd is waited on with
``trio.lowlevel.wait_readable``, then ``*_dispatch(handle, CS_DISPATCH_ALL)`` runs the
callbacks synchronously on the trio thread. Callbacks only append an event to a queue; they
never block and never raise: an exception inside one is stashed and re-raised after dispatch
returns. ``CS_ERR_TRY_AGAIN`` (corosync's queues are full, or a join is in progress) is retried
with an exponential backoff of ``TRY_AGAIN_FIRST_DELAY``..``TRY_AGAIN_MAX_DELAY`` seconds, for
as long as the caller lets it (cancel to give up).

Resource handling: ``open_cpg_group`` finalizes the handle on every exit path (leaving the
group first when corosync is still there); before finalizing it tells trio the fd is closing,
so a task blocked in ``receive`` gets ``trio.ClosedResourceError``. Memory that corosync calls
back into (the cffi callbacks) lives exactly as long as the handle.

Error handling: a corosync call that fails raises ``CorosyncError`` with the ``CsError`` and the
call's name. Corosync going away (dispatch or send answers ``CS_ERR_LIBRARY``; the fd turns
readable at once when the daemon dies) raises ``CorosyncGoneError``; the group is unusable
afterwards and the context manager still releases the handle. Using a group after its context
exited raises ``trio.ClosedResourceError``; two tasks receiving at once, ``trio.BusyResourceError``.
"""

from __future__ import annotations

import enum
import errno
import functools
import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import cffi  # type: ignore[import-untyped]  # no stubs (types-cffi is not installed)
import trio

from clogfs.errors import ClogfsError, LocalProtocolError

log = logging.getLogger(__name__)

# C declarations from corosync's public headers (corosync 3.1). C enums are declared as
# ``int``, their size on every Linux ABI; their values live in the Python enums below.
_CDEF = """
/* corosync/corotypes.h */
typedef int cs_error_t;
typedef int cs_dispatch_flags_t;

/* <sys/uio.h> */
struct iovec { void *iov_base; size_t iov_len; };

/* corosync/cpg.h */
typedef uint64_t cpg_handle_t;
typedef int cpg_guarantee_t;
typedef int cpg_model_t;
struct cpg_address { uint32_t nodeid; uint32_t pid; uint32_t reason; };
struct cpg_name { uint32_t length; char value[128]; };
struct cpg_ring_id { uint32_t nodeid; uint64_t seq; };
typedef void (*cpg_deliver_fn_t)(cpg_handle_t handle, const struct cpg_name *group_name,
    uint32_t nodeid, uint32_t pid, void *msg, size_t msg_len);
typedef void (*cpg_confchg_fn_t)(cpg_handle_t handle, const struct cpg_name *group_name,
    const struct cpg_address *member_list, size_t member_list_entries,
    const struct cpg_address *left_list, size_t left_list_entries,
    const struct cpg_address *joined_list, size_t joined_list_entries);
typedef void (*cpg_totem_confchg_fn_t)(cpg_handle_t handle, struct cpg_ring_id ring_id,
    uint32_t member_list_entries, const uint32_t *member_list);
typedef struct { cpg_model_t model; } cpg_model_data_t;
typedef struct {
    cpg_model_t model;
    cpg_deliver_fn_t cpg_deliver_fn;
    cpg_confchg_fn_t cpg_confchg_fn;
    cpg_totem_confchg_fn_t cpg_totem_confchg_fn;
    unsigned int flags;
} cpg_model_v1_data_t;
cs_error_t cpg_model_initialize(cpg_handle_t *handle, cpg_model_t model,
    cpg_model_data_t *model_data, void *context);
cs_error_t cpg_finalize(cpg_handle_t handle);
cs_error_t cpg_fd_get(cpg_handle_t handle, int *fd);
cs_error_t cpg_max_atomic_msgsize_get(cpg_handle_t handle, uint32_t *size);
cs_error_t cpg_dispatch(cpg_handle_t handle, cs_dispatch_flags_t dispatch_types);
cs_error_t cpg_join(cpg_handle_t handle, const struct cpg_name *group);
cs_error_t cpg_leave(cpg_handle_t handle, const struct cpg_name *group);
cs_error_t cpg_mcast_joined(cpg_handle_t handle, cpg_guarantee_t guarantee,
    const struct iovec *iovec, unsigned int iov_len);
cs_error_t cpg_local_get(cpg_handle_t handle, unsigned int *local_nodeid);

/* corosync/quorum.h */
typedef uint64_t quorum_handle_t;
typedef void (*quorum_notification_fn_t)(quorum_handle_t handle, uint32_t quorate,
    uint64_t ring_seq, uint32_t view_list_entries, uint32_t *view_list);
typedef struct { quorum_notification_fn_t quorum_notify_fn; } quorum_callbacks_t;
cs_error_t quorum_initialize(quorum_handle_t *handle, quorum_callbacks_t *callbacks,
    uint32_t *quorum_type);
cs_error_t quorum_finalize(quorum_handle_t handle);
cs_error_t quorum_fd_get(quorum_handle_t handle, int *fd);
cs_error_t quorum_dispatch(quorum_handle_t handle, cs_dispatch_flags_t dispatch_types);
cs_error_t quorum_getquorate(quorum_handle_t handle, int *quorate);
cs_error_t quorum_trackstart(quorum_handle_t handle, unsigned int flags);
"""

ffi = cffi.FFI()
ffi.cdef(_CDEF)

CPG_LIBRARY = "libcpg.so.4"
QUORUM_LIBRARY = "libquorum.so.5"

# corosync/corotypes.h: cs_dispatch_flags_t (there is no CPG_DISPATCH_ALL in corosync 3)
CS_DISPATCH_ALL = 2
# corosync/corotypes.h: tracking flags
CS_TRACK_CURRENT = 0x01
CS_TRACK_CHANGES = 0x02
# corosync/cpg.h: cpg_guarantee_t
CPG_TYPE_AGREED = 2
# corosync/cpg.h: cpg_model_t
CPG_MODEL_V1 = 1
CPG_MODEL_V1_DELIVER_INITIAL_TOTEM_CONF = 0x01
CPG_MAX_NAME_LENGTH = 128
# corosync/quorum.h: quorum_type out-parameter of quorum_initialize
QUORUM_FREE = 0
QUORUM_SET = 1

#: first and largest pause between two attempts of a call that answered CS_ERR_TRY_AGAIN
TRY_AGAIN_FIRST_DELAY = 0.0001
TRY_AGAIN_MAX_DELAY = 0.05


class CsError(enum.IntEnum):
    """``cs_error_t`` from corosync/corotypes.h."""

    OK = 1  # CS_OK
    ERR_LIBRARY = 2  # CS_ERR_LIBRARY
    ERR_VERSION = 3  # CS_ERR_VERSION
    ERR_INIT = 4  # CS_ERR_INIT
    ERR_TIMEOUT = 5  # CS_ERR_TIMEOUT
    ERR_TRY_AGAIN = 6  # CS_ERR_TRY_AGAIN
    ERR_INVALID_PARAM = 7  # CS_ERR_INVALID_PARAM
    ERR_NO_MEMORY = 8  # CS_ERR_NO_MEMORY
    ERR_BAD_HANDLE = 9  # CS_ERR_BAD_HANDLE
    ERR_BUSY = 10  # CS_ERR_BUSY
    ERR_ACCESS = 11  # CS_ERR_ACCESS
    ERR_NOT_EXIST = 12  # CS_ERR_NOT_EXIST
    ERR_NAME_TOO_LONG = 13  # CS_ERR_NAME_TOO_LONG
    ERR_EXIST = 14  # CS_ERR_EXIST
    ERR_NO_SPACE = 15  # CS_ERR_NO_SPACE
    ERR_INTERRUPT = 16  # CS_ERR_INTERRUPT
    ERR_NAME_NOT_FOUND = 17  # CS_ERR_NAME_NOT_FOUND
    ERR_NO_RESOURCES = 18  # CS_ERR_NO_RESOURCES
    ERR_NOT_SUPPORTED = 19  # CS_ERR_NOT_SUPPORTED
    ERR_BAD_OPERATION = 20  # CS_ERR_BAD_OPERATION
    ERR_FAILED_OPERATION = 21  # CS_ERR_FAILED_OPERATION
    ERR_MESSAGE_ERROR = 22  # CS_ERR_MESSAGE_ERROR
    ERR_QUEUE_FULL = 23  # CS_ERR_QUEUE_FULL
    ERR_QUEUE_NOT_AVAILABLE = 24  # CS_ERR_QUEUE_NOT_AVAILABLE
    ERR_BAD_FLAGS = 25  # CS_ERR_BAD_FLAGS
    ERR_TOO_BIG = 26  # CS_ERR_TOO_BIG
    ERR_NO_SECTIONS = 27  # CS_ERR_NO_SECTIONS
    ERR_CONTEXT_NOT_FOUND = 28  # CS_ERR_CONTEXT_NOT_FOUND
    ERR_TOO_MANY_GROUPS = 30  # CS_ERR_TOO_MANY_GROUPS
    ERR_SECURITY = 100  # CS_ERR_SECURITY


class CpgReason(enum.IntEnum):
    """``cpg_reason_t`` from corosync/cpg.h: why a member joined or left."""

    JOIN = 1  # CPG_REASON_JOIN: it called cpg_join
    LEAVE = 2  # CPG_REASON_LEAVE: it called cpg_leave
    NODEDOWN = 3  # CPG_REASON_NODEDOWN: its node left the corosync membership
    NODEUP = 4  # CPG_REASON_NODEUP: its node (re)joined the corosync membership
    PROCDOWN = 5  # CPG_REASON_PROCDOWN: its process ended or finalized without leaving


class CorosyncError(ClogfsError):
    """A corosync library call failed.

    Attributes:
        call: the C function that failed.
        cs_error: what it returned (an int when corosync answered a code we do not know).
    """

    errno = errno.EIO

    def __init__(self, call: str, cs_error: int, detail: str = "") -> None:
        try:
            code: int = CsError(cs_error)
            name = f"CS_{CsError(cs_error).name}"
        except ValueError:
            code, name = cs_error, f"cs_error_t {cs_error}"
        message = f"{call} failed: {name}"
        super().__init__(f"{message} ({detail})" if detail else message)
        self.call = call
        self.cs_error = code


class CorosyncGoneError(CorosyncError):
    """Corosync is not running, or went away while we were connected (``CS_ERR_LIBRARY``)."""

    errno = errno.ENOTCONN


def _check(call: str, result: int) -> None:
    if result == CsError.OK:
        return
    if result == CsError.ERR_LIBRARY:
        raise CorosyncGoneError(call, result, "is corosync running?")
    raise CorosyncError(call, result)


@functools.cache
def load_library(name: str) -> Any:
    """Open a corosync client library (``CPG_LIBRARY`` or ``QUORUM_LIBRARY``) once per process.

    Raises:
        CorosyncError: the library is not installed (Debian: ``libcpg4``, ``libquorum5``).
    """
    try:
        return ffi.dlopen(name)
    except OSError as exc:
        raise CorosyncError("dlopen", CsError.ERR_LIBRARY, f"{name}: {exc}") from exc


async def retry_try_again(call: str, attempt: Callable[[], int]) -> int:
    """Run ``attempt`` until it answers something other than ``CS_ERR_TRY_AGAIN``.

    Pauses between attempts grow from ``TRY_AGAIN_FIRST_DELAY`` to ``TRY_AGAIN_MAX_DELAY``;
    there is no limit on the number of attempts: cancel to give up. The call checkpoints for
    cancellation only before a successful attempt, never after it, so a cancelled caller
    knows the call did not happen.

    Args:
        call: the C function's name, for errors.
        attempt: one try of the call, returning its ``cs_error_t``.

    Returns:
        How many times the call answered ``CS_ERR_TRY_AGAIN`` before it succeeded.

    Raises:
        CorosyncError: any other failure (``CorosyncGoneError`` for ``CS_ERR_LIBRARY``).
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    delay = TRY_AGAIN_FIRST_DELAY
    retries = 0
    while (result := attempt()) == CsError.ERR_TRY_AGAIN:
        retries += 1
        await trio.sleep(delay)
        delay = min(delay * 2, TRY_AGAIN_MAX_DELAY)
    _check(call, result)
    if retries == 0:
        await trio.lowlevel.cancel_shielded_checkpoint()
    return retries


@dataclass(frozen=True)
class CpgMember:
    """One member of a CPG group: a process on a node."""

    node_id: int
    pid: int


@dataclass(frozen=True)
class CpgAddress:
    """A member that joined or left, and why."""

    node_id: int
    pid: int
    reason: CpgReason


@dataclass(frozen=True)
class Deliver:
    """A message multicast to the group, in total order (own messages included)."""

    node_id: int
    pid: int
    payload: bytes


@dataclass(frozen=True)
class ConfChange:
    """The group's membership changed: the new member list, who joined and who left."""

    members: tuple[CpgMember, ...]
    joined: tuple[CpgAddress, ...]
    left: tuple[CpgAddress, ...]


@dataclass(frozen=True)
class TotemChange:
    """Corosync's own membership (the totem ring) changed; the first one is the current ring."""

    ring_node_id: int
    ring_seq: int
    members: tuple[int, ...]


CpgEvent = Deliver | ConfChange | TotemChange


class _Recorder:
    """What the C callbacks of one handle write into: an event queue and a stashed error."""

    def __init__(self) -> None:
        self.events: deque[Any] = deque()
        self.error: BaseException | None = None

    def record(self, make: Callable[[], object]) -> None:
        """Append ``make()``; an exception is stashed (the first one wins), never raised."""
        if self.error is not None:
            return
        try:
            self.events.append(make())
        except BaseException as exc:  # re-raised by raise_stashed after dispatch
            self.error = exc

    def raise_stashed(self) -> None:
        """Re-raise, once, the exception a callback stashed."""
        error, self.error = self.error, None
        if error is not None:
            raise error


def _addresses(entries: Any, count: int) -> tuple[CpgAddress, ...]:
    return tuple(
        CpgAddress(entries[i].nodeid, entries[i].pid, CpgReason(entries[i].reason))
        for i in range(count)
    )


def _cpg_name(name: bytes) -> Any:
    if not 0 < len(name) <= CPG_MAX_NAME_LENGTH:
        raise ValueError(f"a CPG group name has 1 to {CPG_MAX_NAME_LENGTH} bytes, not {len(name)}")
    cname = ffi.new("struct cpg_name *")
    cname.length = len(name)
    ffi.memmove(cname.value, name, len(name))
    return cname


async def _wait_and_dispatch(
    fd: int, dispatch: Callable[[], int], recorder: _Recorder, call: str
) -> None:
    """Wait until corosync has something for the handle, then run its callbacks."""
    await trio.lowlevel.wait_readable(fd)
    result = dispatch()
    recorder.raise_stashed()
    if result != CsError.ERR_TRY_AGAIN:  # nothing (more) to dispatch is no error
        _check(call, result)


class CpgGroup:
    """A joined CPG group (made by ``open_cpg_group``).

    Attributes:
        name: the group name.
        node_id: this node's corosync node id.
        pid: this process's id, which with ``node_id`` names this member.
        max_message_bytes: the largest payload ``send`` accepts (``cpg_max_atomic_msgsize_get``).
        try_again_count: how many times corosync answered ``CS_ERR_TRY_AGAIN`` to ``send``.
    """

    def __init__(
        self, lib: Any, handle: int, fd: int, name: bytes, node_id: int, max_message_bytes: int
    ) -> None:
        self._lib = lib
        self._handle = handle
        self._fd = fd
        self._recorder = _Recorder()
        self._receiving = False
        self._closed = False
        self._gone: CorosyncGoneError | None = None
        self.name = name
        self.node_id = node_id
        self.pid = os.getpid()
        self.max_message_bytes = max_message_bytes
        self.try_again_count = 0

    @property
    def member(self) -> CpgMember:
        """This process as a member of the group."""
        return CpgMember(self.node_id, self.pid)

    def _usable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the CPG group was left")
        if self._gone is not None:
            raise CorosyncGoneError(self._gone.call, CsError.ERR_LIBRARY, "corosync went away")

    def _note_gone(self, exc: CorosyncError) -> None:
        if isinstance(exc, CorosyncGoneError) and self._gone is None:
            self._gone = exc
            log.error("corosync went away (group %r, node %d): %s", self.name, self.node_id, exc)

    def _mcast_attempt(self, payload: bytes) -> Callable[[], int]:
        """One ``cpg_mcast_joined`` of ``payload`` per call (checked for use and size first)."""
        self._usable()
        if len(payload) > self.max_message_bytes:
            raise LocalProtocolError(
                f"CPG message of {len(payload)} bytes exceeds {self.max_message_bytes}"
            )
        iov = ffi.new("struct iovec *")
        buffer = ffi.from_buffer(payload)
        iov.iov_base = buffer
        iov.iov_len = len(payload)
        lib, handle = self._lib, self._handle

        def attempt() -> int:
            _keep = buffer  # the iovec points into it
            result: int = lib.cpg_mcast_joined(handle, CPG_TYPE_AGREED, iov, 1)
            return result

        return attempt

    async def send(self, payload: bytes) -> None:
        """Multicast ``payload`` to the group with AGREED (total) order.

        Corosync answers ``CS_ERR_TRY_AGAIN`` when its queues are full; the send is then
        retried with backoff until it is accepted or the caller is cancelled. When ``send``
        returns, the message is accepted; it is not delivered yet.

        Raises:
            LocalProtocolError: ``payload`` is larger than ``max_message_bytes``.
            CorosyncGoneError: corosync went away.
            CorosyncError: corosync refused the message.
            trio.ClosedResourceError: the group was left.
        """
        attempt = self._mcast_attempt(payload)
        try:
            self.try_again_count += await retry_try_again("cpg_mcast_joined", attempt)
        except CorosyncError as exc:
            self._note_gone(exc)
            raise

    def try_send(self, payload: bytes) -> bool:
        """One synchronous attempt of :meth:`send` (no checkpoint): False on ``CS_ERR_TRY_AGAIN``.

        ``cpg_mcast_joined`` is a short IPC call to the local corosync, so a caller with
        nothing queued can multicast at once and fall back to :meth:`send` (which waits out
        ``CS_ERR_TRY_AGAIN``) only when this answers False.

        Raises:
            The same as :meth:`send`, except that ``CS_ERR_TRY_AGAIN`` is answered False.
        """
        result = self._mcast_attempt(payload)()
        if result == CsError.ERR_TRY_AGAIN:
            self.try_again_count += 1
            return False
        try:
            _check("cpg_mcast_joined", result)
        except CorosyncError as exc:
            self._note_gone(exc)
            raise
        return True

    async def receive(self) -> CpgEvent:
        """Return the next event of the group, in corosync's total order.

        Raises:
            CorosyncGoneError: corosync went away (every later call raises it too).
            CorosyncError: dispatch failed otherwise.
            trio.ClosedResourceError: the group was left (also raised in a task blocked here).
            trio.BusyResourceError: another task is receiving.
        """
        self._usable()
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving from this CPG group")
        self._receiving = True
        try:
            if self._recorder.events:
                await trio.lowlevel.checkpoint()
            while not self._recorder.events:
                try:
                    await _wait_and_dispatch(
                        self._fd,
                        lambda: int(self._lib.cpg_dispatch(self._handle, CS_DISPATCH_ALL)),
                        self._recorder,
                        "cpg_dispatch",
                    )
                except CorosyncError as exc:
                    self._note_gone(exc)
                    raise
            event: CpgEvent = self._recorder.events.popleft()
            return event
        finally:
            self._receiving = False

    def __aiter__(self) -> CpgGroup:
        return self

    async def __anext__(self) -> CpgEvent:
        return await self.receive()

    # -- C callbacks: run inside cpg_dispatch, record only ---------------------------------

    def _on_deliver(
        self, handle: int, group: Any, nodeid: int, pid: int, msg: Any, msg_len: int
    ) -> None:
        self._recorder.record(lambda: Deliver(nodeid, pid, bytes(ffi.buffer(msg, msg_len))))

    def _on_confchg(
        self,
        handle: int,
        group: Any,
        members: Any,
        n_members: int,
        left: Any,
        n_left: int,
        joined: Any,
        n_joined: int,
    ) -> None:
        self._recorder.record(
            lambda: ConfChange(
                tuple(CpgMember(members[i].nodeid, members[i].pid) for i in range(n_members)),
                _addresses(joined, n_joined),
                _addresses(left, n_left),
            )
        )

    def _on_totem_confchg(self, handle: int, ring_id: Any, n_members: int, members: Any) -> None:
        self._recorder.record(
            lambda: TotemChange(ring_id.nodeid, ring_id.seq, tuple(members[0:n_members]))
        )


@asynccontextmanager
async def open_cpg_group(name: bytes) -> AsyncIterator[CpgGroup]:
    """Connect to the local corosync and join the CPG group ``name``.

    The first ``ConfChange`` that lists this member marks where its membership starts in the
    total order. ``cpg_model_initialize`` and ``cpg_join`` are retried while corosync answers
    ``CS_ERR_TRY_AGAIN``.

    Args:
        name: the group name, 1 to ``CPG_MAX_NAME_LENGTH`` bytes.

    Resource handling: on exit (normal, error or cancellation) the group is left with
    ``cpg_leave`` (unless corosync is gone) and the handle finalized; a task still blocked in
    ``receive`` gets ``trio.ClosedResourceError``.

    Raises:
        CorosyncGoneError: corosync is not running here.
        CorosyncError: initialization or join failed otherwise, or the library is missing.
    """
    cname = _cpg_name(name)
    lib = load_library(CPG_LIBRARY)
    owner: list[CpgGroup] = []

    # The callbacks must outlive the handle: they are kept in this frame until finalize.
    def deliver(*args: Any) -> None:
        owner[0]._on_deliver(*args)

    def confchg(*args: Any) -> None:
        owner[0]._on_confchg(*args)

    def totem_confchg(*args: Any) -> None:
        owner[0]._on_totem_confchg(*args)

    callbacks = (
        ffi.callback("cpg_deliver_fn_t", deliver),
        ffi.callback("cpg_confchg_fn_t", confchg),
        ffi.callback("cpg_totem_confchg_fn_t", totem_confchg),
    )
    model = ffi.new("cpg_model_v1_data_t *")
    model.model = CPG_MODEL_V1
    model.cpg_deliver_fn, model.cpg_confchg_fn, model.cpg_totem_confchg_fn = callbacks
    model.flags = CPG_MODEL_V1_DELIVER_INITIAL_TOTEM_CONF
    handle_out = ffi.new("cpg_handle_t *")
    await retry_try_again(
        "cpg_model_initialize",
        lambda: int(
            lib.cpg_model_initialize(
                handle_out, CPG_MODEL_V1, ffi.cast("cpg_model_data_t *", model), ffi.NULL
            )
        ),
    )
    handle = int(handle_out[0])
    fd: int | None = None
    group: CpgGroup | None = None
    joined = False
    try:
        fd_out = ffi.new("int *")
        _check("cpg_fd_get", lib.cpg_fd_get(handle, fd_out))
        fd = int(fd_out[0])
        node_out = ffi.new("unsigned int *")
        _check("cpg_local_get", lib.cpg_local_get(handle, node_out))
        size_out = ffi.new("uint32_t *")
        _check("cpg_max_atomic_msgsize_get", lib.cpg_max_atomic_msgsize_get(handle, size_out))
        group = CpgGroup(lib, handle, fd, name, int(node_out[0]), int(size_out[0]))
        owner.append(group)
        await retry_try_again("cpg_join", lambda: int(lib.cpg_join(handle, cname)))
        joined = True
        log.debug("joined CPG group %r as node %d pid %d", name, group.node_id, group.pid)
        yield group
    finally:
        if group is not None:
            group._closed = True
            if joined and group._gone is None:
                result = lib.cpg_leave(handle, cname)
                if result != CsError.OK:
                    log.debug("cpg_leave of %r answered %d", name, result)
        if fd is not None:
            trio.lowlevel.notify_closing(fd)
        result = lib.cpg_finalize(handle)
        if result != CsError.OK:
            log.debug("cpg_finalize answered %d", result)


class QuorumHandle:
    """A handle on corosync's quorum service (``quorum_initialize``), tracking changes.

    Low-level: ``clogfs.cluster.quorum`` wraps it for trio. Each dispatched notification is
    queued as ``(quorate, ring_seq, members)``.

    Attributes:
        quorum_type: ``QUORUM_SET`` when a quorum provider (votequorum) is configured,
            ``QUORUM_FREE`` when corosync runs without one (then every node is "quorate").
        fd: the descriptor to wait on before ``dispatch``.
    """

    def __init__(self) -> None:
        self._lib = load_library(QUORUM_LIBRARY)
        self._recorder = _Recorder()
        self._callback = ffi.callback("quorum_notification_fn_t", self._on_notify)
        self._callbacks = ffi.new("quorum_callbacks_t *")
        self._callbacks.quorum_notify_fn = self._callback
        self._handle: int | None = None
        self.quorum_type = QUORUM_FREE
        self.fd = -1

    def initialize(self) -> int:
        """Connect (one try); return the ``cs_error_t``. On success set ``quorum_type``, ``fd``."""
        handle_out = ffi.new("quorum_handle_t *")
        type_out = ffi.new("uint32_t *")
        result = int(self._lib.quorum_initialize(handle_out, self._callbacks, type_out))
        if result == CsError.OK:
            self._handle = int(handle_out[0])
            self.quorum_type = int(type_out[0])
            fd_out = ffi.new("int *")
            _check("quorum_fd_get", self._lib.quorum_fd_get(self._handle, fd_out))
            self.fd = int(fd_out[0])
        return result

    def _live_handle(self) -> int:
        if self._handle is None:
            raise trio.ClosedResourceError("the quorum handle is not initialized")
        return self._handle

    def getquorate(self) -> bool:
        """Whether this node is quorate now (``quorum_getquorate``)."""
        quorate = ffi.new("int *")
        _check("quorum_getquorate", self._lib.quorum_getquorate(self._live_handle(), quorate))
        return bool(quorate[0])

    def trackstart(self) -> int:
        """Ask for a notification at every change (one try); return the ``cs_error_t``."""
        return int(self._lib.quorum_trackstart(self._live_handle(), CS_TRACK_CHANGES))

    async def next_notification(self) -> tuple[bool, int, tuple[int, ...]]:
        """Wait for and return the next ``(quorate, ring_seq, members)`` notification.

        Raises:
            CorosyncGoneError: corosync went away.
            trio.ClosedResourceError: the handle was finalized.
        """
        handle = self._live_handle()
        while not self._recorder.events:
            await _wait_and_dispatch(
                self.fd,
                lambda: int(self._lib.quorum_dispatch(handle, CS_DISPATCH_ALL)),
                self._recorder,
                "quorum_dispatch",
            )
        notification: tuple[bool, int, tuple[int, ...]] = self._recorder.events.popleft()
        return notification

    def finalize(self) -> None:
        """Release the handle (idempotent); a task waiting on ``fd`` gets ClosedResourceError."""
        if self._handle is None:
            return
        handle, self._handle = self._handle, None
        if self.fd >= 0:
            trio.lowlevel.notify_closing(self.fd)
        result = self._lib.quorum_finalize(handle)
        if result != CsError.OK:
            log.debug("quorum_finalize answered %d", result)

    def _on_notify(
        self, handle: int, quorate: int, ring_seq: int, n_members: int, members: Any
    ) -> None:
        self._recorder.record(lambda: (bool(quorate), ring_seq, tuple(members[0:n_members])))
