"""Plugin discovery and the calls into plugins.

Plugins come from four places, all feeding one `pluggy.PluginManager` owned by the
application: the built-in ones (`builtin_plugins/`), `.py` modules in the plugins folder,
installed packages exposing the entry point group `mojavox_notify`, and objects a test or an
embedding program passes in. The settings' `enabled` / `disabled` lists pick among them by name
(module name, file stem or entry point name). A plugin of a built-in's name replaces it;
`plugins.builtin: false` leaves the built-in ones out.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable

import pluggy

from . import builtin_plugins, hookspecs
from .model import NotificationType, NotificationTypes
from .settings import Settings

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "mojavox_notify"


class PluginError(RuntimeError):
    """A plugin could not be loaded or registered; the message names it and the problem."""

    def __init__(self, plugin: str, problem: str):
        super().__init__(f"plugin {plugin}: {problem}")
        self.plugin = plugin


def build_plugin_manager(settings: Settings, extra: Iterable[tuple[str, Any]] = (),
                         discover: bool = True) -> pluggy.PluginManager:
    """A plugin manager with the hookspecs, the discovered plugins and `extra` (name, plugin)."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    candidates: list[tuple[str, Callable[[], Any]]] = []  # (name, loader): import only if selected
    if discover:
        directory = settings.plugins.directory
        if directory:
            candidates += _modules_in(settings.resolve_path(directory))
        candidates += _entry_points()
    candidates += [(name, lambda plugin=plugin: plugin) for name, plugin in extra]
    if discover and settings.plugins.builtin:
        candidates = _builtins_not_replaced(candidates) + candidates
    selected = _select(candidates, settings.plugins.enabled, settings.plugins.disabled)
    for name, load in selected:
        _register(manager, name, load())
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as error:
        raise PluginError(_name_of(manager, error.plugin), str(error)) from None
    return manager


def _builtins_not_replaced(others: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    replaced = {name for name, _ in others} & set(builtin_plugins.NAMES)
    for name in sorted(replaced):
        log.info("plugin %s replaces the built-in one of that name", name)
    return [(name, lambda name=name: importlib.import_module(f"{builtin_plugins.__name__}.{name}"))
            for name in builtin_plugins.NAMES if name not in replaced]


def _modules_in(directory: Path) -> list[tuple[str, Any]]:
    if not directory.is_dir():
        log.info("plugins folder %s does not exist; no local plugins", directory)
        return []
    found = []
    for path in sorted(directory.glob("*.py")):
        if path.name.startswith("_"):
            continue
        found.append((path.stem, lambda path=path: _import_file(path)))
    return found


def _import_file(path: Path) -> ModuleType:
    module_name = f"mojavox_notify_plugins.{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # any import-time failure of a plugin stops start-up, named
        raise PluginError(path.stem, f"cannot be imported from {path}: "
                                     f"{type(error).__name__}: {error}") from error
    sys.modules[module_name] = module
    return module


def _entry_points() -> list[tuple[str, Any]]:
    found = []
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        def load(entry_point=entry_point):
            try:
                return entry_point.load()
            except Exception as error:
                raise PluginError(entry_point.name, f"entry point {entry_point.value} cannot be "
                                  f"loaded: {type(error).__name__}: {error}") from error
        found.append((entry_point.name, load))
    return found


def _select(candidates, enabled, disabled) -> list[tuple[str, Any]]:
    names = [name for name, _ in candidates]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise PluginError(duplicates[0], "is provided twice (plugins folder and entry point?)")
    missing = sorted(set(enabled) - set(names))
    if missing:
        raise PluginError(missing[0], f"is listed in plugins.enabled but was not found; "
                                      f"found: {', '.join(sorted(names)) or 'none'}")
    return [(name, plugin) for name, plugin in candidates
            if (not enabled or name in enabled) and name not in disabled]


def _register(manager: pluggy.PluginManager, name: str, plugin: Any) -> None:
    functions = [attribute for attribute in dir(plugin)
                 if attribute.startswith("mojavox_") and callable(getattr(plugin, attribute, None))]
    unknown = [attribute for attribute in functions if not hasattr(manager.hook, attribute)]
    if unknown:
        raise PluginError(name, f"defines {unknown[0]}, which is not a hook; hooks are "
                                f"{', '.join(_hook_names(manager))}")
    unmarked = [attribute for attribute in functions
                if manager.parse_hookimpl_opts(plugin, attribute) is None]
    if unmarked:  # pluggy would silently never call it
        raise PluginError(name, f"{unmarked[0]} is not marked @hookimpl "
                                "(from mojavox_notify import hookimpl), so it would never be called")
    try:
        manager.register(plugin, name=name)
    except (pluggy.PluginValidationError, ValueError) as error:
        raise PluginError(name, str(error)) from None


def _hook_names(manager: pluggy.PluginManager) -> list[str]:
    return sorted(name for name in dir(manager.hook) if name.startswith("mojavox_"))


def _name_of(manager: pluggy.PluginManager, plugin: Any) -> str:
    return manager.get_name(plugin) or repr(plugin)


async def resolve(value: Any) -> Any:
    """Await a hook result if a plugin returned an awaitable."""
    return await value if inspect.isawaitable(value) else value


class Plugins:
    """The application's view of its plugins: registered types, event types, and hook calls."""

    def __init__(self, manager: pluggy.PluginManager):
        self.manager = manager
        self.types = self._collect_types()
        self.event_types = self._collect_event_types()
        self._owner_callers: dict[str, Any] = {}

    def _collect_types(self) -> NotificationTypes:
        types = NotificationTypes()
        for impl in self.manager.hook.mojavox_register_types.get_hookimpls():
            name = impl.plugin_name
            for entry in impl.function() or []:
                try:
                    if isinstance(entry, dict):
                        entry = NotificationType(**entry)
                    if not isinstance(entry, NotificationType):
                        raise ValueError(f"returned {entry!r}, not a NotificationType")
                    if not entry.plugin:
                        entry = NotificationType(entry.name, entry.default_priority,
                                                 entry.description, plugin=name)
                    types.register(entry)
                except (TypeError, ValueError) as error:
                    raise PluginError(name, f"mojavox_register_types: {error}") from None
        return types

    def _collect_event_types(self) -> dict[str, str]:
        owners: dict[str, str] = {}
        self.event_descriptions: dict[str, str] = {}
        for impl in self.manager.hook.mojavox_event_types.get_hookimpls():
            declared = impl.function() or {}
            if not isinstance(declared, dict):
                raise PluginError(impl.plugin_name, "mojavox_event_types must return a dict")
            for event_type, description in declared.items():
                if event_type in owners:
                    raise PluginError(impl.plugin_name, f"event type {event_type} is already "
                                                        f"handled by {owners[event_type]}")
                owners[event_type] = impl.plugin_name
                self.event_descriptions[event_type] = str(description)
        return owners

    def describe(self) -> list[dict[str, Any]]:
        """What `GET /api/plugins` shows: each plugin, its hooks, its types and event types."""
        described = []
        for name, plugin in sorted(self.manager.list_name_plugin(), key=lambda item: item[0]):
            hooks = sorted(caller.name for caller in self.manager.get_hookcallers(plugin) or [])
            described.append({
                "name": name,
                "hooks": hooks,
                "notificationTypes": [t.name for t in self.types if t.plugin == name],
                "eventTypes": sorted(e for e, owner in self.event_types.items() if owner == name),
            })
        return described

    async def drafts_for(self, event) -> Any:
        """Ask only the plugin that declared the event's type (an async hook would otherwise
        stop a firstresult call before the owner is reached)."""
        owner = self.event_types[event.type]
        caller = self._owner_callers.get(owner)
        if caller is None:
            others = [plugin for name, plugin in self.manager.list_name_plugin() if name != owner]
            caller = self.manager.subset_hook_caller("mojavox_event_to_drafts", others)
            self._owner_callers[owner] = caller
        return await resolve(caller(event=event))

    def listens(self, hook_name: str) -> bool:
        """Whether any plugin implements this hook (callers skip per-notification calls if not)."""
        return bool(getattr(self.manager.hook, hook_name).get_hookimpls())

    async def call_each(self, hook_name: str, **kwargs) -> list[Any]:
        """Call every implementation of a broadcast hook, awaiting async ones, in order."""
        if not self.listens(hook_name):
            return []
        return [await resolve(result) for result in getattr(self.manager.hook, hook_name)(**kwargs)]
