"""The one YAML reading of decnode: every file it reads (configs and their `base:`, network profiles, sweep files,
its own config.yaml) goes through `read`, every `--set` value through `parse`, and what it writes through `dump`.

PyYAML implements YAML 1.1, where `1e-3` is a string (its float form needs a dot), `010` is octal 8 and `1:30`
is 90. We read scalars the YAML 1.2 way instead, and refuse a key given twice in one mapping (1.1 keeps the last
one silently, so a second `train:` section wiped the first). Every error is one line naming the file and line.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

FLOAT_TAG, INT_TAG = "tag:yaml.org,2002:float", "tag:yaml.org,2002:int"
MAX_BYTES = 2**20
MAX_INT_DIGITS = 30  # far above any sensible value; Python refuses to parse > 4300 digits with a bare ValueError

_FLOAT = re.compile(r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                        |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                        |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
                        |[-+]?\.(?:inf|Inf|INF)
                        |\.(?:nan|NaN|NAN))$""", re.X)
_INT = re.compile(r"^(?:[-+]?[0-9][0-9_]*|0x[0-9a-fA-F_]+)$")


class YamlError(ValueError):
    """Unreadable or invalid YAML; the message is one line naming the source."""


class StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # the base class reports unhashable keys itself
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (first at line {seen[key]})", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node):
        text = self.construct_scalar(node).replace("_", "")
        digits = text.lstrip("+-")
        if len(digits) > MAX_INT_DIGITS:
            raise yaml.constructor.ConstructorError(
                None, None, f"integer with {len(digits)} digits is too large", node.start_mark)
        return int(text, 16) if digits.startswith("0x") else int(text, 10)


# Replace YAML 1.1's int and float resolvers by YAML 1.2's (with underscores, which users type for 1_000).
StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (FLOAT_TAG, INT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
StrictLoader.add_implicit_resolver(FLOAT_TAG, _FLOAT, list("-+0123456789."))
StrictLoader.add_implicit_resolver(INT_TAG, _INT, list("-+0123456789"))
StrictLoader.add_constructor(INT_TAG, StrictLoader.construct_yaml_int)


def _one_line(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = f"line {mark.line + 1}: " if mark is not None else ""
    return f"{where}{problem}".replace("\n", " ")


def parse(text: str, source: str):
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader
    except yaml.YAMLError as err:
        raise YamlError(f"{source}: not valid YAML ({_one_line(err)})") from None
    except (ValueError, OverflowError, RecursionError) as err:  # e.g. a float like 1e999999 is fine; be safe anyway
        raise YamlError(f"{source}: not valid YAML ({type(err).__name__}: {str(err)[:80]})") from None


# What each kind of file holds, for the message when it holds something else.
HOLDS = {"config file": "sections", "network profile": "profile keys", "sweep file": "sweep keys"}


def read(path: Path, what: str = "config file") -> dict:
    """A YAML file holding a mapping (an empty file: {}); YamlError for anything else. `what` names the kind of
    file in the messages ("config file", "network profile", "sweep file"), which are otherwise the same for all."""
    path = Path(path)
    if path.is_dir():
        raise YamlError(f"{what} {path} is a directory, not a YAML file")
    if not path.exists():
        raise YamlError(f"{what} not found: {path}")
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:  # such a file is a few KB; do not spend a minute parsing a stray data file
            raise YamlError(f"{what} {path} is {size / 2**20:.1f} MB; a {what} is at most {MAX_BYTES // 2**20} MB")
        raw = path.read_bytes()
    except OSError as err:
        raise YamlError(f"cannot read {what} {path}: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise YamlError(f"{what} {path} is not a text file (not UTF-8)") from None
    data = parse(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise YamlError(f"{path}: expected a mapping of {HOLDS.get(what, 'keys')}, got {type(data).__name__}")
    return data


class StrictDumper(yaml.SafeDumper):
    """Writes what StrictLoader reads back unchanged: a string that YAML 1.2 would read as a number (a run
    directory named `1e5`) is quoted, which PyYAML's 1.1 resolvers would not do."""


StrictDumper.yaml_implicit_resolvers = StrictLoader.yaml_implicit_resolvers


def dump(data) -> str:
    """YAML text of data in the order given; parse(dump(x)) == x."""
    return yaml.dump(data, Dumper=StrictDumper, sort_keys=False)  # ASCII (escapes): any locale writes it


def merge(base: dict, over: dict) -> dict:
    """over on top of base, key by key at every depth (a mapping never replaces a whole mapping)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_with_bases(path: Path, _chain: tuple = ()) -> dict:
    """A config file merged over the file its `base:` key names (relative to it), recursively."""
    path = Path(path)
    if path.resolve() in _chain:
        raise YamlError(f"{path}: `base:` files form a cycle ({' -> '.join(p.name for p in (*_chain, path))})")
    data = read(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise YamlError(f"{path}: `base:` must name a YAML file, got {base!r}")
    return merge(read_with_bases(path.parent / base, (*_chain, path.resolve())), data)
