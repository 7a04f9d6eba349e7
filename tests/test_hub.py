"""The hub on its own: which connection method each broker message reaches, with fake
connections (no socket, no storage)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from mojavox_notify.broker.messages import (AllRead, BroadcastPosted, NotificationCreated,
                                            NotificationDeleted, NotificationRead, Resync)
from mojavox_notify.hub import Hub


class Recorder:
    """A connection that writes down what the hub called on it."""

    def __init__(self, user_id: str, remote_ip: str = "127.0.0.1", hub: Hub | None = None):
        self.user_id, self.remote_ip, self.tenant = user_id, remote_ip, "default"
        self.calls: list[tuple[str, object]] = []
        self._detach_from = hub  # detaches itself on its first notification, as a closing socket

    def notify(self, message):
        self.calls.append(("notify", message))
        if self._detach_from is not None:
            self._detach_from.detach(self)

    def notification_read(self, message):
        self.calls.append(("notification_read", message))

    def all_read(self, message):
        self.calls.append(("all_read", message))

    def notification_deleted(self, message):
        self.calls.append(("notification_deleted", message))

    def broadcast(self, payload):
        self.calls.append(("broadcast", payload["id"]))

    def resync(self):
        self.calls.append(("resync", None))

    def shutdown(self, code, reason):
        self.calls.append(("shutdown", code))


def _broadcast(broadcast_id: str, expires_in: float = 3600) -> dict:
    now = datetime.now(timezone.utc)
    return {"id": broadcast_id, "timestamp": now.isoformat(),
            "expiresAt": (now + timedelta(seconds=expires_in)).isoformat()}


def test_each_kind_reaches_its_method_on_its_users_sockets_only():
    hub = Hub()
    alice, alice_too, bob = Recorder("alice"), Recorder("alice"), Recorder("bob")
    for connection in (alice, alice_too, bob):
        hub.attach(connection)
    messages = [NotificationCreated("alice", 1, {"id": "n1"}, {"count": 1}),
                NotificationRead("alice", "n1", {"count": 0}),
                AllRead("alice", {"count": 0}),
                NotificationDeleted("alice", "n1", {"count": 0})]
    for message in messages:
        hub.dispatch(message)
    expected = list(zip(("notify", "notification_read", "all_read", "notification_deleted"),
                        messages))
    assert alice.calls == expected and alice_too.calls == expected
    assert bob.calls == []


def test_a_broadcast_reaches_every_socket_once_and_times_its_fan_out():
    fan_outs = []
    hub = Hub()
    hub.on_fan_out = fan_outs.append
    connections = [Recorder(f"user-{index}") for index in range(3)]
    for connection in connections:
        hub.attach(connection)
    hub.dispatch(BroadcastPosted(_broadcast("b1")))
    hub.dispatch(BroadcastPosted(_broadcast("b1")))  # heard again (from storage after a resync)
    hub.dispatch(BroadcastPosted(_broadcast("gone", expires_in=-1)))
    assert [connection.calls for connection in connections] == [[("broadcast", "b1")]] * 3
    assert len(fan_outs) == 1 and fan_outs[0] >= 0
    assert [payload["id"] for payload in hub.broadcasts.active()] == ["b1"]


def test_resync_of_some_users_or_everyone():
    resynced_all = []
    hub = Hub()
    hub.on_resync_all = lambda: resynced_all.append(True)
    alice, bob = Recorder("alice"), Recorder("bob")
    hub.attach(alice)
    hub.attach(bob)
    hub.dispatch(Resync(users=["bob", "nobody"]))
    assert (alice.calls, bob.calls, resynced_all) == ([], [("resync", None)], [])
    hub.dispatch(Resync(users=None))
    assert (alice.calls, bob.calls) == ([("resync", None)], [("resync", None)] * 2)
    assert resynced_all == [True]


def test_a_socket_that_detaches_while_delivered_to_does_not_stop_the_others():
    hub = Hub()
    leaving = Recorder("alice", hub=hub)
    staying = Recorder("alice")
    hub.attach(leaving)
    hub.attach(staying)
    first = NotificationCreated("alice", 1, {"id": "n1"}, {"count": 1})
    hub.dispatch(first)
    hub.dispatch(NotificationCreated("alice", 2, {"id": "n2"}, {"count": 2}))
    assert len(leaving.calls) == 1 and len(staying.calls) == 2
    assert hub.connections_of("alice") == 1


def test_counts_by_user_and_address_follow_attach_and_detach():
    hub = Hub()
    joined, left = [], []

    class Observer:
        def joined(self, connection):
            joined.append(connection.user_id)

        def left(self, connection):
            left.append(connection.user_id)

    hub.observers.append(Observer())
    one, two = Recorder("alice", "10.0.0.1"), Recorder("bob", "10.0.0.1")
    hub.attach(one)
    hub.attach(one)  # twice: once
    hub.attach(two)
    assert (len(hub), hub.users, hub.connections_from("10.0.0.1")) == (2, 2, 2)
    hub.detach(one)
    hub.detach(one)
    assert (len(hub), hub.users, hub.connections_from("10.0.0.1")) == (1, 1, 1)
    assert (joined, left) == (["alice", "bob"], ["alice"])
    hub.shutdown_all(1001, "bye")
    assert two.calls == [("shutdown", 1001)]
