"""Registries: one per extension point, name → entry, and the plugins that add entries from outside decnode.

    COMBINERS = Registry("algorithm")
    COMBINERS.register("decpg", CombinerEntry(...))         # an entry
    @FAULTS.register("stall")                                 # or a class, as a decorator
    class Stall: ...
    COMBINERS.get("x")  ->  ConfigError: unknown algorithm 'x' (known: decpg, ps, ps_entropy, push_sum)

Code asks an entry what it needs to know (does this algorithm gossip? is this critic per agent?), never compares
the name. An entry may name its implementation by import path ("decnode.marl.combiners:DecPG", see `Lazy`), so a
registry sits at the root (config.py checks names without importing torch) while the class lives floors above.

Plugins: `load_plugins(["my.module", "path/to/file.py"])` imports each module once (a dotted name from sys.path, or
a .py file by path); what a plugin registers at import is then known to every command and every worker. A file
is recorded by its absolute path, so a resumed run finds it from any directory.

This module imports nothing from decnode: every layer may use it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad configuration value; the message is one line that names the key and the allowed values.
    (Defined here, the lowest module that raises it; config.py exports it as always.)"""


class Registry(Generic[T]):
    """name → entry for one kind of thing ("algorithm", "critic placement", ...), in registration order.

    spell(name, entry) -> str: how a name is shown in the list of known ones (e.g. "smax:<map>"); default: the name.
    """

    def __init__(self, kind: str, spell: Callable[[str, T], str] | None = None):
        self.kind, self._spell, self._entries = kind, spell, {}

    def register(self, name: str, entry: T | None = None):
        """Add `entry` under `name`; without an entry, a decorator registering the class (or function) it wraps.
        A name given twice is an error unless it is the same entry again (a module imported twice)."""
        if entry is None:
            def decorate(obj):
                self.register(name, obj)
                return obj
            return decorate
        if not isinstance(name, str) or not name or ":" in name or name != name.strip():
            raise ValueError(f"{self.kind} name must be a non-empty string without ':' or spaces, got {name!r}")
        old = self._entries.get(name)
        if old is not None and old != entry:
            raise ConfigError(f"{self.kind} '{name}' is registered twice ({_where(old)} and {_where(entry)})")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ConfigError(f"unknown {self.kind} {_show(name)} (known: {', '.join(self.spelled())})") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def spelled(self) -> list[str]:
        """The known names as a user writes them."""
        return [self._spell(n, e) if self._spell else n for n, e in self._entries.items()]

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(list(self._entries.items()))

    def find(self, name: object, default: T | None = None) -> T | None:
        """The entry, or `default` when no entry has that name (for callers that report it their own way)."""
        return self._entries.get(name, default) if isinstance(name, str) else default

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"


def _show(name: Any) -> str:
    return f"'{name}'" if isinstance(name, str) else repr(name)


def _where(entry: Any) -> str:
    impl = getattr(entry, "impl", entry)
    if isinstance(impl, str):
        return impl
    return f"{getattr(impl, '__module__', '?')}.{getattr(impl, '__qualname__', impl)}"


@dataclass(frozen=True)
class Lazy:
    """An implementation: the object itself, or "package.module:attribute" imported on first use (so a low layer
    can name a class of a higher one without importing it)."""

    impl: Any

    def load(self) -> Any:
        if not isinstance(self.impl, str):
            return self.impl
        module, _, attr = self.impl.partition(":")
        obj = importlib.import_module(module)
        for part in attr.split(".") if attr else ():
            obj = getattr(obj, part)
        return obj


# ---- plugins ----------------------------------------------------------------------------------------------------
_LOADED: dict[str, Any] = {}  # canonical spec -> module


def canonical_plugin(spec: str) -> str:
    """A file (ends in .py or names a directory) by its absolute path; a dotted module name as given."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"run.plugins: a plugin is a module name or a .py file, got {spec!r:.60}")
    spec = spec.strip()
    if spec.endswith(".py") or "/" in spec or "\\" in spec:
        return str(Path(spec).expanduser().resolve())
    return spec


def load_plugins(specs) -> list[str]:
    """Import every plugin once (in order); returns their canonical specs (what run.plugins records).
    A plugin that cannot be found or fails while importing is one ConfigError line naming it."""
    if specs is None:
        return []
    if not isinstance(specs, (list, tuple)):
        raise ConfigError(f"run.plugins must be a list of module names or .py files, got {specs!r:.60}")
    out = []
    for spec in specs:
        key = canonical_plugin(spec)
        if key not in _LOADED:
            _LOADED[key] = _import(key)
        if key not in out:
            out.append(key)
    return out


def _import(spec: str):
    is_file = spec.endswith(".py") or Path(spec).is_absolute()
    try:
        if not is_file:
            return importlib.import_module(spec)
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"plugin {spec}: no such file")
        # A module name of its own per file (two plugins may share a file name), kept in sys.modules so that
        # what it defines pickles and its dataclasses resolve their module.
        name = f"decnode_plugin_{path.stem}_{hashlib.sha1(spec.encode()).hexdigest()[:8]}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module
    except ConfigError:
        raise
    except ModuleNotFoundError as err:
        if not is_file and err.name and spec.startswith(err.name):
            raise ConfigError(f"plugin '{spec}': no module named '{err.name}' (a dotted name importable here, or a "
                              ".py file by path)") from None
        raise ConfigError(f"plugin '{spec}' failed to import: {_last_line(err)}") from None
    except Exception as err:  # noqa: BLE001 - any error in the user's module is reported in one line
        raise ConfigError(f"plugin '{spec}' failed to import: {_last_line(err)}") from None


def _last_line(err: BaseException) -> str:
    """The error and where in the plugin it happened, on one line."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if "importlib" not in f.filename]
    where = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    text = " ".join(str(err).split()) or type(err).__name__
    return f"{type(err).__name__}: {text[:200]}{where}"
