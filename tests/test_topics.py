"""Topics over REST (/api/topics): membership, paging, limits, key and id rules, who may manage
them, and two tenants sharing topic keys and user ids, on both storage engines."""

from __future__ import annotations

from urllib.parse import quote, urlencode

import pytest

from mojavox_notify import topics

from .support.engines import both_engines
from .support.tokens import new_user, token

pytestmark = [both_engines, pytest.mark.timeout(60)]

PLATFORM = token("platform-service", ["service"])
# For the tests that write 1,000 members a call: nx-27017, the MongoDB engine's test server,
# scans the collection for each upsert (a MongoDB server uses the unique index), so such a call
# takes about a second there, the default operation timeout.
THOUSANDS = {"storage.operation_timeout_seconds": 10}


def service_of(tenant: str) -> str:
    return token(f"svc-{tenant}", ["service"], tenant=tenant)


def members_path(key: str, **query) -> str:
    path = f"/api/topics/{quote(key, safe='')}/members"
    return f"{path}?{urlencode(query)}" if query else path


def topic_path(key: str, **query) -> str:
    path = f"/api/topics/{quote(key, safe='')}"
    return f"{path}?{urlencode(query)}" if query else path


def topics_path(**query) -> str:
    return f"/api/topics?{urlencode(query)}"


async def change(app, key: str, add=(), remove=(), caller: str = PLATFORM, **fields):
    body = {"add": list(add), "remove": list(remove), **fields}
    return await app.api.put(members_path(key), caller, body)


async def all_members(app, key: str, caller: str = PLATFORM, limit: int = 1000, **query) -> list[str]:
    """Every member, following `next` page by page."""
    members, after = [], None
    while True:
        page_query = {"limit": limit, **query, **({"after": after} if after else {})}
        status, page = await app.api.get(members_path(key, **page_query), caller)
        assert status == 200, page
        members += page["members"]
        after = page["next"]
        if after is None:
            return members


def assert_error(body, status: int, expected_status: int, code: str | None = None) -> str:
    assert status == expected_status, body
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]["message"]


# -- membership ---------------------------------------------------------------------------------

async def test_adding_and_removing_members_answers_the_count(start_app):
    app = await start_app()
    status, body = await change(app, "north-supervisors", add=["carol", "alice", "bob"])
    assert (status, body) == (200, {"topic": "north-supervisors", "members": 3})

    status, body = await change(app, "north-supervisors", add=["bob", "dave", "dave"])
    assert body == {"topic": "north-supervisors", "members": 4}, "a member is counted once"
    status, body = await change(app, "north-supervisors", remove=["alice", "nobody"])
    assert body["members"] == 3, "removing a non-member changes nothing"
    status, body = await change(app, "north-supervisors", add=["erin"], remove=["erin", "carol"])
    assert body["members"] == 2, "adds come first, then removes"

    status, page = await app.api.get(members_path("north-supervisors"), PLATFORM)
    assert (status, page) == (200, {"members": ["bob", "dave"], "next": None})
    status, body = await app.api.put(members_path("north-supervisors"), PLATFORM, {})
    assert (status, body) == (200, {"topic": "north-supervisors", "members": 2})


async def test_members_page_through_thousands_with_next(start_app):
    app = await start_app(**THOUSANDS)
    everyone = sorted(f"agent-{number:05d}" for number in range(2500))
    for start in range(0, len(everyone), 1000):
        status, body = await change(app, "campaign:spring.dialers", add=everyone[start:start + 1000])
        assert status == 200, body
    assert body["members"] == 2500

    status, page = await app.api.get(members_path("campaign:spring.dialers"), PLATFORM)
    assert page["members"] == everyone[:100], "100 by default, in ascending order"
    assert page["next"] == everyone[99]
    status, page = await app.api.get(members_path("campaign:spring.dialers", after=page["next"],
                                                  limit=3), PLATFORM)
    assert page == {"members": everyone[100:103], "next": everyone[102]}

    assert await all_members(app, "campaign:spring.dialers", limit=700) == everyone
    status, page = await app.api.get(members_path("campaign:spring.dialers", limit=1000,
                                                  after=everyone[1499]), PLATFORM)
    assert page == {"members": everyone[1500:], "next": None}, \
        "the last page, exactly full, says so: no empty page after it"
    status, page = await app.api.get(members_path("campaign:spring.dialers", after="zzz"), PLATFORM)
    assert page == {"members": [], "next": None}


async def test_paging_limits_and_cursors_are_checked(start_app):
    app = await start_app()
    await change(app, "team", add=["alice"])
    for query, name in [({"limit": 0}, "limit"), ({"limit": 1001}, "limit"),
                        ({"limit": "ten"}, "limit"), ({"after": ""}, "after"),
                        ({"after": " alice"}, "after"), ({"after": "x" * 129}, "after")]:
        status, body = await app.api.get(members_path("team", **query), PLATFORM)
        assert assert_error(body, status, 400).startswith(f"{name}:"), (query, body)
    status, page = await app.api.get(members_path("team", limit=1000), PLATFORM)
    assert page == {"members": ["alice"], "next": None}


async def test_one_call_adds_and_removes_at_most_1000(start_app):
    app = await start_app(**THOUSANDS)
    thousand = [f"user-{number}" for number in range(1000)]
    status, body = await change(app, "all-hands", add=thousand, remove=thousand[:10])
    assert (status, body["members"]) == (200, 990)

    for field in ("add", "remove"):
        status, body = await change(app, "all-hands", **{field: [*thousand, "one-more"]})
        message = assert_error(body, status, 400)
        assert message.startswith(f"{field}:") and "1000" in message, message
    assert len(await all_members(app, "all-hands")) == 990, "a refused call changes nothing"


async def test_an_unknown_topic_has_no_members(start_app):
    app = await start_app()
    status, page = await app.api.get(members_path("never-made"), PLATFORM)
    assert (status, page) == (200, {"members": [], "next": None})


async def test_deleting_a_topic_removes_every_member_and_may_be_repeated(start_app):
    app = await start_app()
    await change(app, "night-shift", add=["alice", "bob"])
    await change(app, "day-shift", add=["alice"])

    status, body = await app.api.delete(topic_path("night-shift"), PLATFORM)
    assert (status, body) == (200, {"success": True})
    status, page = await app.api.get(members_path("night-shift"), PLATFORM)
    assert page == {"members": [], "next": None}
    status, body = await app.api.get(topics_path(userId="alice"), PLATFORM)
    assert body == {"topics": ["day-shift"]}
    status, body = await app.api.delete(topic_path("night-shift"), PLATFORM)
    assert (status, body) == (200, {"success": True}), "deleting again succeeds"
    status, body = await app.api.delete(topic_path("never-made"), PLATFORM)
    assert (status, body) == (200, {"success": True})


async def test_the_topics_of_a_user_are_listed_by_key(start_app):
    app = await start_app()
    alice = new_user("alice")
    for key in ("team:north", "escalations.tier-2", "all"):
        await change(app, key, add=[alice, new_user()])
    await change(app, "team:south", add=[new_user()])

    status, body = await app.api.get(topics_path(userId=alice), PLATFORM)
    assert (status, body) == (200, {"topics": ["all", "escalations.tier-2", "team:north"]})
    await change(app, "all", remove=[alice])
    status, body = await app.api.get(topics_path(userId=alice), PLATFORM)
    assert body == {"topics": ["escalations.tier-2", "team:north"]}
    status, body = await app.api.get(topics_path(userId=new_user()), PLATFORM)
    assert (status, body) == (200, {"topics": []})

    status, body = await app.api.get("/api/topics", PLATFORM)
    assert assert_error(body, status, 400).startswith("userId:")
    status, body = await app.api.get(topics_path(userId=" alice"), PLATFORM)
    assert assert_error(body, status, 400).startswith("userId:")


async def test_a_topic_holds_at_most_its_limit(start_app, monkeypatch):
    monkeypatch.setattr(topics, "MAX_MEMBERS", 5)
    app = await start_app()
    await change(app, "small", add=["a", "b", "c", "d"])

    status, body = await change(app, "small", add=["e", "f"])
    message = assert_error(body, status, 409, "topic_full")
    assert "5" in message and "nothing was changed" in message, message
    assert await all_members(app, "small") == ["a", "b", "c", "d"]

    status, body = await change(app, "small", add=["a", "b", "e"])
    assert (status, body["members"]) == (200, 5), "members already in take no room"
    status, body = await change(app, "small", add=["f"])
    assert_error(body, status, 409, "topic_full")
    status, body = await change(app, "other", add=["a", "b", "c", "d", "e"])
    assert (status, body["members"]) == (200, 5), "the limit is per topic"


# -- keys and ids -------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["-starts-with-a-dash", ".hidden", "x" * 129, "with space",
                                 "slash/inside", "semi;colon", "café", "tab\tkey"])
async def test_a_malformed_topic_key_is_refused_on_every_endpoint(start_app, key):
    app = await start_app()
    for method, path, body in [("PUT", members_path(key), {"add": ["alice"]}),
                               ("GET", members_path(key), None), ("DELETE", topic_path(key), None)]:
        status, answer = await app.api.call(method, path, PLATFORM, body)
        assert assert_error(answer, status, 400).startswith("key:"), (method, answer)


async def test_topic_keys_of_every_allowed_character_and_length_work(start_app):
    app = await start_app()
    for key in ("a", "x" * 128, "Team:North.supervisors_2-b", "9"):
        status, body = await change(app, key, add=["alice"])
        assert (status, body) == (200, {"topic": key, "members": 1}), key
    status, body = await app.api.get(topics_path(userId="alice"), PLATFORM)
    assert body["topics"] == sorted(["a", "x" * 128, "Team:North.supervisors_2-b", "9"])
    status, body = await change(app, "A", add=["bob", "carol"])
    assert body["members"] == 2, "keys are compared exactly: A is not a"


@pytest.mark.parametrize("body, field", [
    ({"add": ["alice", ""]}, "add[1]"),
    ({"add": [" alice"]}, "add[0]"),
    ({"remove": ["x" * 129]}, "remove[0]"),
    ({"add": ["b\x1falice"]}, "add[0]"),  # would spell user alice of tenant b
    ({"add": ["line\nbreak"]}, "add[0]"),
    ({"add": ["del\x7f"]}, "add[0]"),
    ({"remove": [42]}, "remove[0]"),
    ({"add": "alice"}, "add"),
    ({"add": ["alice"], "members": ["bob"]}, "members"),
    ({"add": ["alice"], "tenant": "*"}, "tenant"),
    ({"add": ["alice"], "tenant": "no spaces"}, "tenant"),
])
async def test_a_malformed_update_is_refused_naming_the_field(start_app, body, field):
    app = await start_app()
    status, answer = await app.api.put(members_path("team"), PLATFORM, body)
    assert assert_error(answer, status, 400).startswith(f"{field}:"), answer
    status, page = await app.api.get(members_path("team"), PLATFORM)
    assert page["members"] == []
    status, page = await app.api.get(members_path("team", tenant="b"), PLATFORM)
    assert page["members"] == []


# -- who may manage topics ----------------------------------------------------------------------

async def test_users_may_not_manage_or_read_topics(start_app):
    app = await start_app()
    await change(app, "team", add=["alice"])
    for caller in (token("alice"), token("alice", ["admin"]), token("alice", tenant="a")):
        for method, path, body in [("PUT", members_path("team"), {"add": ["mallory"]}),
                                   ("GET", members_path("team"), None),
                                   ("DELETE", topic_path("team"), None),
                                   ("GET", topics_path(userId="alice"), None)]:
            status, answer = await app.api.call(method, path, caller, body)
            assert "service" in assert_error(answer, status, 403, "forbidden"), (method, path)
    assert await all_members(app, "team") == ["alice"]
    status, answer = await app.api.get(members_path("team"))
    assert_error(answer, status, 401)


async def test_a_tenant_service_naming_another_tenant_is_forbidden(start_app):
    app = await start_app()
    await change(app, "team", add=["alice"], tenant="b")
    caller = service_of("a")
    for method, path, body in [("PUT", members_path("team"), {"add": ["mallory"], "tenant": "b"}),
                               ("PUT", members_path("team"), {"add": ["mallory"], "tenant": "default"}),
                               ("GET", members_path("team", tenant="b"), None),
                               ("DELETE", topic_path("team", tenant="b"), None),
                               ("GET", topics_path(userId="alice", tenant="b"), None)]:
        status, answer = await app.api.call(method, path, caller, body)
        assert_error(answer, status, 403, "tenant_forbidden")
    assert await all_members(app, "team", tenant="b") == ["alice"]
    assert await all_members(app, "team") == [], "nothing reached the default tenant"

    status, body = await change(app, "team", add=["bob"], tenant="a", caller=caller)
    assert (status, body) == (200, {"topic": "team", "members": 1}), "naming its own is fine"
    assert await all_members(app, "team", caller=caller, tenant="a") == ["bob"]


async def test_two_tenants_keep_one_topic_key_and_the_same_user_ids_apart(start_app):
    app = await start_app()
    north, south = service_of("north-collections"), service_of("south-collections")
    status, body = await change(app, "supervisors", add=["alice", "bob"], caller=north)
    assert body["members"] == 2
    status, body = await change(app, "supervisors", add=["alice", "carol", "dave"], caller=south)
    assert body["members"] == 3, "the other tenant's topic of that key is another topic"
    await change(app, "escalations", add=["alice"], caller=north)
    await change(app, "supervisors", add=["zed"])

    assert await all_members(app, "supervisors", caller=north) == ["alice", "bob"]
    assert await all_members(app, "supervisors", caller=south) == ["alice", "carol", "dave"]
    assert await all_members(app, "supervisors") == ["zed"], "the platform addresses the default"
    assert await all_members(app, "supervisors", tenant="south-collections") == \
        ["alice", "carol", "dave"], "or the tenant it names"
    status, body = await app.api.get(topics_path(userId="alice"), north)
    assert body == {"topics": ["escalations", "supervisors"]}
    status, body = await app.api.get(topics_path(userId="alice"), south)
    assert body == {"topics": ["supervisors"]}
    status, body = await app.api.get(topics_path(userId="alice"), PLATFORM)
    assert body == {"topics": []}

    await change(app, "supervisors", remove=["alice"], caller=south)
    status, body = await app.api.delete(topic_path("escalations"), south)
    assert (status, body) == (200, {"success": True})
    assert await all_members(app, "supervisors", caller=north) == ["alice", "bob"]
    assert await all_members(app, "escalations", caller=north) == ["alice"]
    status, body = await app.api.delete(topic_path("supervisors", tenant="north-collections"), PLATFORM)
    assert await all_members(app, "supervisors", caller=north) == []
    assert await all_members(app, "supervisors", caller=south) == ["carol", "dave"]
    assert await all_members(app, "supervisors") == ["zed"]
