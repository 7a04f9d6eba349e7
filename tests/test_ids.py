"""Notification ids made without bson's per-id cost are still MongoDB ObjectIds, unique across
the processes of `serve --workers`."""

from __future__ import annotations

import multiprocessing
import time

from bson import ObjectId

from mojavox_notify.ids import new_object_id


def _made_in_child(pipe) -> None:
    pipe.send([bytes(new_object_id().binary) for _ in range(1000)])


def test_ids_are_object_ids_of_now_and_never_repeat():
    before = int(time.time())
    ids = [new_object_id() for _ in range(100_000)]
    assert all(isinstance(made, ObjectId) for made in ids)
    assert len(set(ids)) == len(ids)
    assert before <= ids[0].generation_time.timestamp() <= time.time()
    assert ObjectId.is_valid(str(ids[-1]))


def test_a_forked_worker_makes_other_ids_than_its_parent():
    parent = [new_object_id().binary for _ in range(1000)]
    receiving, sending = multiprocessing.get_context("fork").Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(target=_made_in_child, args=(sending,))
    child.start()
    made = receiving.recv()
    child.join(10)
    assert {oid[4:9] for oid in made} != {oid[4:9] for oid in parent}  # the per-process bytes
    assert not set(made) & set(parent)
