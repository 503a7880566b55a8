"""The service's side of a cluster answer: the reply datagram goes out inside the backend's
``answer`` call when nothing waits behind the request, and through the instance's drain task,
in arrival order, when something does (a fake cluster port; no corosync needed)."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from clogfs.log.instance import LogInstance, LogRequest, Reply
from clogfs.metrics import Metrics
from clogfs.netlink.requests import CtrPayload, RequestType, encode_payload
from clogfs.netlink.wire import ConnectorMessage, Protocol, decode_reply, encode_request
from clogfs.netlink.wire import split_datagram as split
from clogfs.registry import LogKey, LogRegistry
from clogfs.service import LogService

UUID = b"CLOGFS-SERVICE-ANSWER-1"
LUID = 7


class FakeConn:
    """The connector socket: records every reply datagram."""

    port_id = 4242

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, datagram: bytes) -> None:
        self.sent.append(datagram)

    def seqs(self) -> list[int]:
        return [decode_reply(d, Protocol.ULOG).seq for d in self.sent]


class FakeCluster:
    """A cluster port whose answers the test gives (``io.answer``) when it likes."""

    cluster_state = "leader"

    def __init__(self) -> None:
        self.member_keys: set[LogKey] = set()
        self.tokens: list[tuple[object, LogRequest]] = []
        self.io: Any = None

    def is_member(self, key: LogKey) -> bool:
        return key in self.member_keys

    def members(self, key: LogKey) -> tuple[int, ...] | None:
        return (1,) if key in self.member_keys else None

    def start_member(self, instance: LogInstance, resume_token: object, io: Any) -> None:
        self.member_keys.add(instance.key)
        self.io = io
        io.answer(resume_token, Reply())

    def request(self, key: LogKey, token: object, request: LogRequest) -> None:
        self.tokens.append((token, request))


def message(seq: int, rtype: RequestType, value: object = None) -> ConnectorMessage:
    data = encode_payload(rtype, value, Protocol.ULOG)
    datagram = encode_request(Protocol.ULOG, seq=seq, request_type=rtype, uuid=UUID, luid=LUID,
                              data=data)  # fmt: skip
    (item,) = split(datagram)
    assert isinstance(item, ConnectorMessage)
    return item


async def resumed_member(nursery: trio.Nursery) -> tuple[LogService, FakeConn, FakeCluster]:
    """A clustered-core log constructed and resumed (a member of the fake cluster)."""
    conn, cluster = FakeConn(), FakeCluster()
    service = LogService(LogRegistry(), conn, Metrics(), nursery, cluster=cluster)  # type: ignore[arg-type]
    ctr = CtrPayload(b"1024 clustered-core 64 nosync", reconnect=False)
    service.on_message(message(1, RequestType.CTR, ctr), trio.current_time())
    await trio.testing.wait_all_tasks_blocked()
    service.on_message(message(2, RequestType.RESUME), trio.current_time())
    await trio.testing.wait_all_tasks_blocked()
    assert conn.seqs() == [1, 2]
    assert all(decode_reply(d, Protocol.ULOG).error == 0 for d in conn.sent)
    conn.sent.clear()
    return service, conn, cluster


async def test_the_reply_goes_out_inside_the_answer() -> None:
    async with trio.open_nursery() as nursery:
        service, conn, cluster = await resumed_member(nursery)
        service.on_message(message(3, RequestType.MARK_REGION, (5,)), trio.current_time())
        ((token, request),) = cluster.tokens
        assert request.request_type is RequestType.MARK_REGION
        assert conn.sent == []
        cluster.io.answer(token, Reply())
        assert conn.seqs() == [3]  # no checkpoint in between: no task ran
        # the instance is idle again: the next request goes straight to the cluster
        service.on_message(message(4, RequestType.FLUSH, ()), trio.current_time())
        assert len(cluster.tokens) == 2
        cluster.io.answer(cluster.tokens[1][0], Reply(error=-5))
        assert conn.seqs() == [3, 4]
        assert decode_reply(conn.sent[1], Protocol.ULOG).error == -5
        nursery.cancel_scope.cancel()


async def test_requests_queued_behind_are_answered_in_order_by_the_drain_task() -> None:
    async with trio.open_nursery() as nursery:
        service, conn, cluster = await resumed_member(nursery)
        service.on_message(message(3, RequestType.MARK_REGION, (5,)), trio.current_time())
        service.on_message(message(4, RequestType.IN_SYNC, 5), trio.current_time())  # local
        service.on_message(message(5, RequestType.FLUSH, ()), trio.current_time())
        assert len(cluster.tokens) == 1  # the others wait behind the MARK
        cluster.io.answer(cluster.tokens[0][0], Reply())
        await trio.testing.wait_all_tasks_blocked()
        assert conn.seqs() == [3, 4]  # the IN_SYNC answered locally, the FLUSH handed on
        assert len(cluster.tokens) == 2
        cluster.io.answer(cluster.tokens[1][0], Reply())
        await trio.testing.wait_all_tasks_blocked()
        assert conn.seqs() == [3, 4, 5]
        # idle again afterwards
        service.on_message(message(6, RequestType.CLEAR_REGION, (5,)), trio.current_time())
        assert len(cluster.tokens) == 3
        cluster.io.answer(cluster.tokens[2][0], Reply())
        assert conn.seqs() == [3, 4, 5, 6]
        nursery.cancel_scope.cancel()


async def test_an_answer_given_at_once_is_sent_at_once() -> None:
    """A backend that answers inside ``request`` (a detached member's EIO, say)."""
    async with trio.open_nursery() as nursery:
        service, conn, cluster = await resumed_member(nursery)

        def answer_now(key: LogKey, token: object, request: LogRequest) -> None:
            cluster.io.answer(token, Reply(error=-5))

        cluster.request = answer_now  # type: ignore[method-assign]
        service.on_message(message(3, RequestType.MARK_REGION, (5,)), trio.current_time())
        service.on_message(message(4, RequestType.FLUSH, ()), trio.current_time())
        assert conn.seqs() == [3, 4]
        nursery.cancel_scope.cancel()
