"""The broker's messages and the generic pub/sub part, without Redis: the wire form of each
kind, and what the base class does for every backend (own messages skipped, whom the others
missed while away, the resync when back). tests/test_scaleout.py runs the Redis backend."""

from __future__ import annotations

import asyncio

import pytest

from mojavox_notify.broker import InProcessBroker
from mojavox_notify.broker.messages import (KINDS, WIRE_VERSION, AllRead, BroadcastPosted,
                                            EscalationChanged, NotificationCreated, NotificationDeleted,
                                            NotificationRead, NotOurs, Resync, decode, encode)
from mojavox_notify.broker.pubsub import MAX_BATCH, PubSubBroker

EVERY_KIND = [
    NotificationCreated("alice", 7, {"id": "n1", "data": {"big": 2 ** 70}}, {"count": 1}, 1.5),
    NotificationRead("alice", "n1", {"count": 0}, 2.5),
    AllRead("bob", {"count": 0}),
    NotificationDeleted("bob", "n2", {"count": 0}, 3.0),
    BroadcastPosted({"id": "b1", "title": "Dialer restarts at 22:00"}, 4.0),
    EscalationChanged({"id": "e1", "state": "acknowledged", "acknowledgedBy": "bob"},
                      ["alice", "bob"], 5.0),
    Resync(users=["alice"]),
    Resync(users=None),
]


def test_every_kind_round_trips_with_its_fields_in_order():
    assert {type(message) for message in EVERY_KIND} == set(KINDS.values())
    origin, decoded = decode(encode("origin1", EVERY_KIND))
    assert origin == "origin1" and decoded == EVERY_KIND


def test_the_wire_form_is_positional_without_trailing_empty_fields():
    data = encode("o", [NotificationRead("alice", "n1", {"count": 0}), Resync(users=None)])
    assert data == (b'o|[' + str(WIRE_VERSION).encode()
                    + b',["read","alice","n1",{"count":0}],["resync"]]')


@pytest.mark.parametrize("data, says", [
    (b"no separator", "not a MOJAVOX"),
    (b"o|not json", "not JSON"),
    (b'o|{"not": "ours"}', "not a MOJAVOX"),
    (b'o|[1,["read_all","alice",{"count":0}]]', "wire version 1"),
    (b'o|[2,["teleport","alice"]]', "unknown message"),
    (b'o|[2,["read","alice"]]', "a read message of 1 fields"),
    (b'o|[2,["read_all","alice",{},1,"extra"]]', "a read_all message of 4 fields"),
])
def test_what_is_not_ours_is_refused_with_a_reason(data, says):
    with pytest.raises(NotOurs, match=says):
        decode(data)


async def test_the_in_process_broker_delivers_in_order_and_survives_a_broken_receiver(caplog):
    heard = []
    broker = InProcessBroker()

    def receiver(message):
        if isinstance(message, AllRead):
            raise RuntimeError("a broken receiver")
        heard.append(message)

    await broker.start(receiver)
    await broker.publish_many(EVERY_KIND[:4])
    assert heard == [EVERY_KIND[0], EVERY_KIND[1], EVERY_KIND[3]]
    assert "delivering a read_all message failed" in caplog.text
    await broker.stop()
    await broker.publish(EVERY_KIND[0])
    assert len(heard) == 3


class Bus:
    """An in-memory pub/sub backend shared by brokers standing for processes; `away` makes
    every transmission fail as a backend that does not answer."""

    def __init__(self):
        self.brokers: list[BusBroker] = []
        self.away = False
        self.transmissions: list[list[bytes]] = []


class BusBroker(PubSubBroker):
    name = "bus"
    errors = (ConnectionError,)

    def __init__(self, bus: Bus):
        super().__init__()
        self.bus = bus
        self.lost: list[BaseException] = []
        bus.brokers.append(self)

    @property
    def available(self):  # what this process believes: away since a transmission failed
        return not self.lost

    async def start(self, receiver):
        self._receiver = receiver

    async def stop(self):
        self._receiver = None

    async def _transmit(self, batches):
        await asyncio.sleep(0)  # a round trip, during which other publishes queue
        if self.bus.away:
            raise ConnectionError("the bus is away")
        self.bus.transmissions.append(batches)
        for broker in self.bus.brokers:
            for batch in batches:
                broker._heard(batch)

    def _lost(self, error):
        self.lost.append(error)

    async def back(self):
        self.lost.clear()
        await self._recovered()


async def _processes(count: int = 2):
    bus = Bus()
    heard = [[] for _ in range(count)]
    brokers = [BusBroker(bus) for _ in range(count)]
    for broker, inbox in zip(brokers, heard):
        await broker.start(inbox.append)
    return bus, brokers, heard


async def test_each_process_hears_a_message_once_its_own_at_once():
    bus, (first, second), (heard_first, heard_second) = await _processes()
    await first.publish(EVERY_KIND[0])
    assert heard_first == heard_second == [EVERY_KIND[0]]


async def test_publishes_that_queue_meanwhile_travel_together_in_order():
    bus, (first, second), (_, heard_second) = await _processes()
    messages = [AllRead(f"user-{index}", {"count": index}) for index in range(2 * MAX_BATCH + 1)]
    alone = asyncio.ensure_future(first.publish_many(messages[:MAX_BATCH + 1]))
    await asyncio.sleep(0)  # on its way: the others queue behind it
    await asyncio.gather(alone, *(first.publish(message) for message in messages[MAX_BATCH + 1:]))
    assert heard_second == messages
    # The first publish went alone (two batches); all that queued behind it in one transmission.
    assert [len(batches) for batches in bus.transmissions] == [2, MAX_BATCH]


async def test_while_away_the_others_miss_nothing_for_good():
    bus, (first, second), (heard_first, heard_second) = await _processes()
    bus.away = True
    await first.publish(AllRead("alice", {"count": 0}))
    assert first.lost and not first.healthy
    await first.publish(NotificationDeleted("bob", "n2", {"count": 0}))  # not even tried
    assert len(first.lost) == 1
    assert len(heard_first) == 2 and heard_second == []
    bus.away = False
    await first.back()
    assert heard_second == [Resync(users=["alice", "bob"])]
    assert heard_first[-1] == Resync(users=None)  # its own sockets may have missed the others'


async def test_an_escalation_change_missed_while_away_resyncs_its_recipients():
    bus, (first, second), (_, heard_second) = await _processes()
    bus.away = True
    await first.publish(EscalationChanged({"id": "e1", "state": "resolved"}, ["alice", "carol"]))
    bus.away = False
    await first.back()
    assert heard_second == [Resync(users=["alice", "carol"])]


async def test_a_broadcast_missed_while_away_resyncs_everyone():
    bus, (first, second), (_, heard_second) = await _processes()
    bus.away = True
    await first.publish(AllRead("alice", {"count": 0}))
    await first.publish(BroadcastPosted({"id": "b1"}))
    bus.away = False
    await first.back()
    assert heard_second == [Resync(users=None)]


async def test_a_resync_that_fails_to_go_keeps_whom_it_names():
    bus, (first, second), (_, heard_second) = await _processes()
    bus.away = True
    await first.publish(AllRead("alice", {"count": 0}))
    first.lost.clear()
    with pytest.raises(ConnectionError):
        await first.back()
    await first.publish(AllRead("carol", {"count": 0}))  # fails too: remembered beside alice
    bus.away = False
    await first.back()
    assert heard_second == [Resync(users=["alice", "carol"])]


async def test_a_malformed_batch_is_logged_and_skipped(caplog):
    bus, (first, second), (_, heard_second) = await _processes()
    second._heard(b"other|[1,[\"read\"]]")
    second._heard(encode("other", [AllRead("alice", {"count": 0})]))
    assert heard_second == [AllRead("alice", {"count": 0})]
    assert "ignored a malformed message on bus: wire version 1" in caplog.text
