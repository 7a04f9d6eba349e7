"""Plugin discovery: a plugins folder, installed entry points, the enabled/disabled lists, the
start-up message of a broken plugin, GET /api/plugins, and the plugin guide's own example."""

from __future__ import annotations

import importlib
import inspect
import re
import shutil
import sys
import textwrap
import tomllib
import types
from pathlib import Path

import pytest

from mojavox_notify import hookimpl, hookspecs
from mojavox_notify.app import NotifyApp
from mojavox_notify.plugins import ENTRY_POINT_GROUP, PluginError
from mojavox_notify.settings import load_settings

from .support.api import notifications_of, post_event
from .support.paths import PLUGINS_DIR
from .support.sockets import Socket
from .support.tokens import TEST_SECRET, new_user, token

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "plugins.md"
SHIPPED = ["agent_monitor", "call_service", "campaign_service", "payment_service",
           "system_monitor"]

REMINDERS = '''
    """Reminders: a callback a collector scheduled is due."""
    from mojavox_notify import NotificationType, hookimpl
    from mojavox_notify.eventdata import EventData


    @hookimpl
    def mojavox_register_types():
        return [NotificationType("callback_due", "medium", "A scheduled callback is due")]


    @hookimpl
    def mojavox_event_types():
        return {"callback.due": "a scheduled callback is due"}


    @hookimpl
    def mojavox_event_to_drafts(event):
        if event.type != "callback.due":
            return None
        data = EventData(event.data)
        debtor = data.text("debtorName")
        return [{"userId": data.text("userId"), "type": "callback_due", "title": "Callback Due",
                 "message": f"Call {debtor} back now", "actionUrl": "/callbacks"}]
'''


def write_plugins(folder: Path, **modules: str) -> Path:
    """Write each `name=source` as `folder/name.py`; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in modules.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    return folder


def forget_module(monkeypatch, name: str) -> None:
    """Make `name` import afresh in this test and be forgotten after it."""
    monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.delitem(sys.modules, name)


# -- the plugins folder --------------------------------------------------------------------------

@pytest.mark.timeout(30)
async def test_plugin_in_a_plugins_folder_adds_a_type_and_event_type_end_to_end(start_app, tmp_path):
    folder = write_plugins(tmp_path / "plugins", reminders=REMINDERS,
                           _helpers="raise RuntimeError('files starting with _ are not plugins')")
    app = await start_app(**{"plugins.directory": str(folder), "plugins.builtin": False})
    assert app.plugins.types.names == ["callback_due"]

    user = new_user()
    socket = await Socket.open(app, token(user))
    await socket.expect("connected")
    status, body = await post_event(app, "callback.due", {"userId": user, "debtorName": "Jo Doe"})
    assert status == 202, body
    payload = (await socket.expect("notification"))["payload"]
    assert (payload["id"], payload["type"], payload["priority"], payload["message"]) == (
        body["notifications"][0], "callback_due", "medium", "Call Jo Doe back now")
    assert [n["id"] for n in await notifications_of(app, user)] == body["notifications"]
    socket.close()

    status, body = await post_event(app, "payment.received", {"userId": user})
    assert status == 400
    assert body["error"]["message"] == "type: unknown event type; known: callback.due"


@pytest.mark.timeout(30)
async def test_relative_plugins_folder_is_found_next_to_the_settings_file(start_app, make_settings,
                                                                         tmp_path):
    write_plugins(tmp_path / "deployment" / "local_plugins", reminders=REMINDERS)
    settings_file = tmp_path / "deployment" / "settings.yaml"
    settings_file.write_text("plugins:\n  directory: local_plugins\n  builtin: false\n",
                             encoding="utf-8")
    shared = make_settings()
    settings = load_settings(settings_file, environ={}, overrides={
        "storage.url": shared.storage.url,
        "auth.secret": TEST_SECRET, "data_dir": str(tmp_path / "data"),
        "retention.cleanup_interval_minutes": 0})
    app = await start_app(settings=settings)
    assert [name for name, _ in app.plugins.manager.list_name_plugin()] == ["reminders"]


# -- entry points ----------------------------------------------------------------------------

DEMO_PLUGIN = '''
    """A plugin installed as a package: a module entry point and an object entry point."""
    from mojavox_notify import NotificationType, hookimpl


    @hookimpl
    def mojavox_register_types():
        return [{"name": "demo_ping", "default_priority": "low", "description": "a ping"}]


    @hookimpl
    def mojavox_event_types():
        return {"demo.ping": "someone pinged"}


    @hookimpl
    async def mojavox_event_to_drafts(event):
        if event.type != "demo.ping":
            return None
        return [{"userId": event.data["userId"], "type": "demo_ping", "title": "Ping",
                 "message": "pong"}]


    class Audit:
        def __init__(self):
            self.seen = []

        @hookimpl
        def mojavox_notification_created(self, notification, user_id):
            self.seen.append((user_id, notification["type"]))


    AUDIT = Audit()
'''


@pytest.fixture
def installed_distribution(tmp_path, monkeypatch):
    """`install(module_name, module_source, entry_points)`: a distribution on sys.path whose
    entry points (name → object reference) are in the `mojavox_notify` group."""

    def install(module_name: str, source: str | None, entry_points: dict[str, str]) -> None:
        site = tmp_path / "site-packages"
        site.mkdir(exist_ok=True)
        if source is not None:
            (site / f"{module_name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        dist_info = site / f"{module_name}-1.0.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {module_name.replace('_', '-')}\nVersion: 1.0\n",
            encoding="utf-8")
        lines = [f"{name} = {reference}" for name, reference in entry_points.items()]
        (dist_info / "entry_points.txt").write_text(
            f"[{ENTRY_POINT_GROUP}]\n" + "\n".join(lines) + "\n", encoding="utf-8")
        forget_module(monkeypatch, module_name)
        monkeypatch.syspath_prepend(str(site))
        importlib.invalidate_caches()

    return install


@pytest.mark.timeout(30)
async def test_plugins_from_installed_entry_points_are_loaded_end_to_end(start_app,
                                                                        installed_distribution):
    installed_distribution("demo_plugin", DEMO_PLUGIN,
                           {"demo": "demo_plugin", "demo_audit": "demo_plugin:AUDIT"})
    app = await start_app()
    names = [name for name, _ in app.plugins.manager.list_name_plugin()]
    assert sorted(names) == sorted(SHIPPED + ["demo", "demo_audit"])

    user = new_user()
    status, body = await post_event(app, "demo.ping", {"userId": user})
    assert status == 202, body
    [notification] = await notifications_of(app, user)
    assert (notification["type"], notification["priority"], notification["message"]) == (
        "demo_ping", "low", "pong")
    assert sys.modules["demo_plugin"].AUDIT.seen == [(user, "demo_ping")]


@pytest.mark.timeout(30)
async def test_disabled_entry_point_plugin_is_not_loaded(start_app, installed_distribution):
    installed_distribution("demo_plugin", DEMO_PLUGIN, {"demo": "demo_plugin"})
    app = await start_app(**{"plugins.disabled": ["demo"]})
    assert "demo.ping" not in app.plugins.event_types
    status, _ = await post_event(app, "demo.ping", {"userId": new_user()})
    assert status == 400


def test_entry_point_that_cannot_be_loaded_stops_start_up_naming_it(make_settings,
                                                                   installed_distribution):
    installed_distribution("demo_broken", None, {"broken_demo": "demo_broken_missing_module"})
    with pytest.raises(PluginError) as error:
        NotifyApp(make_settings())
    assert error.value.plugin == "broken_demo"
    assert str(error.value) == (
        "plugin broken_demo: entry point demo_broken_missing_module cannot be loaded: "
        "ModuleNotFoundError: No module named 'demo_broken_missing_module'")


def test_entry_point_with_the_name_of_a_folder_plugin_stops_start_up(make_settings, tmp_path,
                                                                    installed_distribution):
    folder = write_plugins(tmp_path / "plugins", reminders=REMINDERS)
    installed_distribution("demo_plugin", DEMO_PLUGIN, {"reminders": "demo_plugin"})
    with pytest.raises(PluginError) as error:
        NotifyApp(make_settings(**{"plugins.directory": str(folder)}))
    assert str(error.value) == ("plugin reminders: is provided twice "
                                "(plugins folder and entry point?)")


def test_a_plugin_named_like_a_built_in_one_replaces_it(make_settings, installed_distribution):
    installed_distribution("demo_plugin", DEMO_PLUGIN, {"payment_service": "demo_plugin"})
    app = NotifyApp(make_settings())
    assert sorted(name for name, _ in app.plugins.manager.list_name_plugin()) == SHIPPED
    assert "demo.ping" in app.plugins.event_types and "payment.received" not in app.plugins.event_types


def test_built_in_plugins_can_be_left_out(make_settings, tmp_path):
    folder = write_plugins(tmp_path / "plugins", reminders=REMINDERS)
    app = NotifyApp(make_settings(**{"plugins.directory": str(folder), "plugins.builtin": False}))
    assert [name for name, _ in app.plugins.manager.list_name_plugin()] == ["reminders"]


# -- enabled / disabled --------------------------------------------------------------------------

@pytest.mark.timeout(30)
async def test_enabled_list_loads_only_the_named_plugins(start_app):
    app = await start_app(**{"plugins.enabled": ["payment_service", "system_monitor"]})
    assert [n for n, _ in app.plugins.manager.list_name_plugin()] == ["payment_service",
                                                                      "system_monitor"]
    assert app.plugins.types.names == ["payment_received", "system_alert"]
    status, body = await post_event(app, "call.completed", {"userId": new_user()})
    assert status == 400
    assert body["error"]["message"] == ("type: unknown event type; known: payment.received, "
                                        "system.alert")


@pytest.mark.timeout(30)
async def test_disabled_list_leaves_out_only_the_named_plugins(start_app):
    app = await start_app(**{"plugins.disabled": ["system_monitor"]})
    assert sorted(n for n, _ in app.plugins.manager.list_name_plugin()) == [
        name for name in SHIPPED if name != "system_monitor"]
    status, _ = await post_event(app, "system.alert", {"userIds": [new_user()],
                                                       "severity": "info", "message": "m"})
    assert status == 400


def test_enabled_plugin_that_is_not_found_stops_start_up(make_settings):
    with pytest.raises(PluginError) as error:
        NotifyApp(make_settings(**{"plugins.enabled": ["payment_service", "sms_gateway"]}))
    assert str(error.value) == ("plugin sms_gateway: is listed in plugins.enabled but was not "
                                "found; found: " + ", ".join(SHIPPED))


# -- broken plugins stop start-up with a message naming the plugin and the problem ---------------

HOOK_NAMES = ", ".join(sorted(name for name in dir(hookspecs) if name.startswith("mojavox_")))

BROKEN_PLUGINS = {
    "import_error": ("import mojavox_no_such_dependency\n",
                     ["cannot be imported from ", "broken_plugin.py: ModuleNotFoundError: "
                      "No module named 'mojavox_no_such_dependency'"]),
    "syntax_error": ("def mojavox_register_types(:\n    return []\n",
                     ["cannot be imported from ", "broken_plugin.py: SyntaxError: "]),
    "exception_at_import": ("raise RuntimeError('the CRM is not configured')\n",
                            ["broken_plugin.py: RuntimeError: the CRM is not configured"]),
    "hookimpl_with_unknown_name": (
        "from mojavox_notify import hookimpl\n\n@hookimpl\ndef register_types():\n    return []\n",
        ["unknown hook 'register_types' in plugin"]),
    "hookimpl_with_misspelt_hook_name": (
        "from mojavox_notify import hookimpl\n\n@hookimpl\ndef mojavox_register_type():\n"
        "    return []\n",
        [f"defines mojavox_register_type, which is not a hook; hooks are {HOOK_NAMES}"]),
    "hook_with_unknown_argument": (
        "from mojavox_notify import hookimpl\n\n@hookimpl\ndef mojavox_event_to_drafts(evt):\n"
        "    return None\n",
        ["for hook 'mojavox_event_to_drafts'", "mojavox_event_to_drafts(evt)",
         "Argument(s) {'evt'} are declared in the hookimpl but can not be found in the hookspec"]),
    "plain_function_with_the_hook_prefix": (
        "def mojavox_something(event):\n    return None\n",
        ["defines mojavox_something, which is not a hook"]),
    "hook_function_without_hookimpl": (
        "from mojavox_notify import NotificationType\n\n"
        "def mojavox_register_types():\n    return [NotificationType('x_ray', 'low')]\n",
        ["mojavox_register_types is not marked @hookimpl (from mojavox_notify import hookimpl), "
         "so it would never be called"]),
    "type_with_unknown_priority": (
        "from mojavox_notify import NotificationType, hookimpl\n\n@hookimpl\n"
        "def mojavox_register_types():\n    return [NotificationType('x_ray', 'urgent')]\n",
        ["mojavox_register_types: notification type x_ray: default priority must be one of "
         "low, medium, high, critical"]),
    "type_named_all": (
        "from mojavox_notify import NotificationType, hookimpl\n\n@hookimpl\n"
        "def mojavox_register_types():\n    return [NotificationType('all', 'low')]\n",
        ["mojavox_register_types: 'all' is reserved for the channel of every type"]),
    "type_that_is_not_a_type": (
        "from mojavox_notify import hookimpl\n\n@hookimpl\n"
        "def mojavox_register_types():\n    return ['x_ray']\n",
        ["mojavox_register_types: returned 'x_ray', not a NotificationType"]),
    "event_types_not_a_dict": (
        "from mojavox_notify import hookimpl\n\n@hookimpl\n"
        "def mojavox_event_types():\n    return ['x.ray']\n",
        ["mojavox_event_types must return a dict"]),
}


@pytest.mark.parametrize("problem", sorted(BROKEN_PLUGINS))
def test_broken_plugin_stops_start_up_with_a_message_naming_it(problem, make_settings, tmp_path):
    source, fragments = BROKEN_PLUGINS[problem]
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "broken_plugin.py").write_text(source, encoding="utf-8")
    (folder / "fine_plugin.py").write_text(textwrap.dedent(REMINDERS), encoding="utf-8")
    with pytest.raises(PluginError) as error:
        NotifyApp(make_settings(**{"plugins.directory": str(folder)}))
    assert error.value.plugin == "broken_plugin"
    message = str(error.value)
    assert message.startswith("plugin broken_plugin: "), message
    for fragment in fragments:
        assert fragment in message, message


def alarm_plugin(priority: str, description: str = "an alarm") -> str:
    return (f"from mojavox_notify import NotificationType, hookimpl\n\n@hookimpl\n"
            f"def mojavox_register_types():\n"
            f"    return [NotificationType('alarm', {priority!r}, {description!r})]\n")


def test_type_registered_twice_with_different_priorities_stops_start_up(make_settings, tmp_path):
    folder = write_plugins(tmp_path / "plugins", a_alarms=alarm_plugin("high"),
                           b_alarms=alarm_plugin("low"))
    with pytest.raises(PluginError) as error:
        NotifyApp(make_settings(**{"plugins.directory": str(folder)}))
    assert str(error.value) == ("plugin b_alarms: mojavox_register_types: notification type alarm "
                                "is registered twice (a_alarms and b_alarms)")


def test_type_registered_twice_with_the_same_settings_is_one_type(make_settings, tmp_path):
    folder = write_plugins(tmp_path / "plugins", a_alarms=alarm_plugin("high"),
                           b_alarms=alarm_plugin("high"))
    app = NotifyApp(make_settings(**{"plugins.directory": str(folder), "plugins.builtin": False}))
    assert [(t.name, t.default_priority) for t in app.plugins.types] == [("alarm", "high")]


def test_event_type_declared_by_two_plugins_stops_start_up(make_settings, tmp_path):
    declares = ("from mojavox_notify import hookimpl\n\n@hookimpl\n"
                "def mojavox_event_types():\n    return {'payment.received': 'mine too'}\n")
    folder = tmp_path / "plugins"
    shutil.copytree(PLUGINS_DIR, folder)
    write_plugins(folder, zz_payments=declares)
    with pytest.raises(PluginError) as error:
        NotifyApp(make_settings(**{"plugins.directory": str(folder)}))
    assert str(error.value) == ("plugin zz_payments: event type payment.received is already "
                                "handled by payment_service")


def test_plugin_object_passed_in_is_checked_like_a_discovered_one(make_settings):
    class Misspelt:
        @hookimpl
        def mojavox_notification_create(self, notification):
            pass

    with pytest.raises(PluginError) as error:
        NotifyApp(make_settings(), plugins=[("misspelt", Misspelt())], discover_plugins=False)
    assert str(error.value).startswith("plugin misspelt: defines mojavox_notification_create, "
                                       "which is not a hook")


# -- GET /api/plugins ------------------------------------------------------------------------

@pytest.mark.timeout(30)
async def test_plugin_list_needs_the_admin_role(start_app):
    app = await start_app()
    user = new_user()
    assert (await app.api.get("/api/plugins"))[0] == 401
    for roles in ([], ["service"]):
        status, body = await app.api.get("/api/plugins", token(user, roles))
        assert status == 403, roles
        assert body["error"] == {"code": "forbidden", "message": "this action needs the 'admin' role"}


@pytest.mark.timeout(30)
async def test_plugin_list_shows_each_plugin_with_its_hooks_types_and_event_types(start_app):
    class Observer:
        @hookimpl
        def mojavox_notification_created(self, notification, user_id):
            pass

        @hookimpl
        async def mojavox_startup(self, app):
            pass

    app = await start_app(plugins=[("observer", Observer())])
    status, body = await app.api.get("/api/plugins", token(new_user("admin"), ["admin"]))
    assert status == 200, body
    listed = {plugin["name"]: plugin for plugin in body["plugins"]}
    assert sorted(listed) == sorted(SHIPPED + ["observer"])
    assert [plugin["name"] for plugin in body["plugins"]] == sorted(listed)
    drafting = ["mojavox_event_to_drafts", "mojavox_event_types", "mojavox_register_types"]
    assert listed["call_service"] == {
        "name": "call_service", "hooks": drafting,
        "notificationTypes": ["call_completed", "call_escalation", "high_value_call"],
        "eventTypes": ["call.completed", "call.ended", "call.escalation", "call.high_value"]}
    assert listed["payment_service"] == {
        "name": "payment_service", "hooks": drafting,
        "notificationTypes": ["payment_received"], "eventTypes": ["payment.received"]}
    assert listed["observer"] == {
        "name": "observer", "hooks": ["mojavox_notification_created", "mojavox_startup"],
        "notificationTypes": [], "eventTypes": []}
    assert body["eventTypes"] == {
        "agent.alert": "an agent metric crossed its threshold",
        "call.completed": "an AI agent finished a call",
        "call.escalation": "an AI agent asks a supervisor to step in",
        "call.high_value": "a debtor with a high balance is on a call",
        "call.ended": "a call ended: its escalation, if any, is resolved",
        "campaign.milestone": "a campaign reached a percentage of its target",
        "payment.received": "a debtor paid on an account",
        "system.alert": "a system warning or error for a list of users (userIds), or for "
                        "every member of a topic (topic)",
    }
    all_types = sorted(t for plugin in body["plugins"] for t in plugin["notificationTypes"])
    assert all_types == ["agent_alert", "call_completed", "call_escalation", "campaign_milestone",
                         "high_value_call", "payment_received", "system_alert"]


# -- the plugin guide (docs/plugins.md) stays true -----------------------------------------------

def guide_blocks(language: str) -> list[str]:
    text = GUIDE.read_text(encoding="utf-8")
    return [body for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)
            if lang == language]


def guide_block(first_line: str) -> str:
    [block] = [body for body in guide_blocks("python") if body.startswith(first_line + "\n")]
    return block


@pytest.mark.timeout(30)
async def test_guide_example_plugin_copied_into_plugins_works_end_to_end(start_app, tmp_path):
    folder = tmp_path / "plugins"
    shutil.copytree(PLUGINS_DIR, folder)
    (folder / "promise_tracker.py").write_text(guide_block("# plugins/promise_tracker.py"),
                                               encoding="utf-8")
    app = await start_app(**{"plugins.directory": str(folder)})

    collector = new_user("collector")
    socket = await Socket.open(app, token(collector))
    await socket.expect("connected")
    data = {"userId": collector, "accountId": "AC-2024-1234", "debtorName": "Jane Doe",
            "amount": 300, "dueDate": "2026-02-01"}
    status, body = await post_event(app, "promise.broken", data, "promise-8841")
    assert status == 202, body
    payload = (await socket.expect("notification"))["payload"]
    assert payload["id"] == body["notifications"][0]
    assert {key: payload[key] for key in ("type", "title", "message", "priority", "read", "data",
                                          "actionUrl")} == {
        "type": "promise_broken", "title": "Promise Broken",
        "message": ("Jane Doe missed a promised payment of $300.00 on account #AC-2024-1234 "
                    "(due 2026-02-01)"),
        "priority": "high", "read": False,
        "data": {"accountId": "AC-2024-1234", "debtorName": "Jane Doe", "amount": 300,
                 "currency": "USD", "dueDate": "2026-02-01"},
        "actionUrl": "/accounts?account=AC-2024-1234"}
    socket.close()

    assert await post_event(app, "promise.broken", data, "promise-8841") == (status, body)
    assert len(await notifications_of(app, collector)) == 1

    del data["amount"]
    status, error = await post_event(app, "promise.broken", data)
    assert (status, error) == (400, {"error": {"code": "invalid_request",
                                               "message": "data.amount: is required"}})

    status, listing = await app.api.get("/api/plugins", token(new_user(), ["admin"]))
    [listed] = [plugin for plugin in listing["plugins"] if plugin["name"] == "promise_tracker"]
    assert (listed["notificationTypes"], listed["eventTypes"]) == (["promise_broken"],
                                                                   ["promise.broken"])


@pytest.mark.timeout(30)
async def test_guide_example_tests_pass_against_the_guide_plugin(start_app, tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "promise_tracker.py").write_text(guide_block("# plugins/promise_tracker.py"),
                                               encoding="utf-8")
    package = types.ModuleType("plugins")
    package.__path__ = [str(folder)]
    monkeypatch.setitem(sys.modules, "plugins", package)
    forget_module(monkeypatch, "plugins.promise_tracker")

    namespace = {"__name__": "tests.test_promise_tracker", "__package__": "tests"}
    exec(compile(guide_block("# tests/test_promise_tracker.py"), "docs/plugins.md", "exec"),
         namespace)
    guide_tests = [value for name, value in namespace.items() if name.startswith("test_")]
    assert len(guide_tests) == 2
    for guide_test in guide_tests:
        await guide_test(start_app)


def guide_section(hook: str) -> str:
    """The prose of the guide's `### <hook>` section (its code blocks left out, so a signature in
    an example does not count as documenting an argument), up to the next heading."""
    prose = re.sub(r"^```.*?^```\n?", "", GUIDE.read_text(encoding="utf-8"), flags=re.M | re.S)
    section = prose.split(f"\n### {hook}\n", 1)[1]
    return re.split(r"^#{1,3} ", section, maxsplit=1, flags=re.M)[0]


def test_guide_python_blocks_compile_and_every_hook_and_argument_is_documented():
    for block in guide_blocks("python"):
        compile(block, "docs/plugins.md", "exec")
    text = GUIDE.read_text(encoding="utf-8")
    hooks = [name for name in dir(hookspecs) if name.startswith("mojavox_")]
    assert len(hooks) == 10
    for hook in hooks:
        assert f"\n### {hook}\n" in text, f"docs/plugins.md has no section for {hook}"
        section = guide_section(hook)
        for argument in inspect.signature(getattr(hookspecs, hook)).parameters:
            assert f"`{argument}`" in section, \
                f"docs/plugins.md: the {hook} section does not name its argument `{argument}`"


def test_guide_packaging_snippets_use_the_entry_point_group():
    [pyproject] = guide_blocks("toml")
    entry_points = tomllib.loads(pyproject)["project"]["entry-points"]
    assert entry_points == {ENTRY_POINT_GROUP: {"promise_tracker": "mojavox_promise_tracker"}}
    [setup_py] = [block for block in guide_blocks("python") if "setup(" in block]
    assert (f'entry_points={{"{ENTRY_POINT_GROUP}": '
            '["promise_tracker = mojavox_promise_tracker"]}') in setup_py
