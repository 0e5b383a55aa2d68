"""The one option parser: a YAML config plus command-line overrides into a tree of dataclasses (fields declared,
with help, and validated in their classes; found and converted here). `--config NAME_OR_YAML`; `--data.block_size 512`
names a field by its path or an unambiguous tail (a bare name: the shallowest such field; `-` and `_` are the same).
YAML mirrors the tree; a section may name another config (`data: data_fineweb_edu`) or `include:` one and change it.
Hand-written: HfArgumentParser takes flat dataclasses only, and TrlParser passes nested values as JSON strings.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

# The recipes' YAML configs ship inside the package (the checkout's recipes/configs points here), so an installed
# wheel runs every stage's default from any folder.
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
INCLUDE_KEY = "include"


def option(default: Any = None, help: str = "") -> Any:
    """A config field with its help text on one line; list and dict defaults are copied per instance."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def resolve_config_path(path: str | Path) -> Path:
    """An existing file; else the shipped config of that name (`pretrain_tiny` or `recipes/configs/x.yaml`)."""
    given = Path(path).expanduser()
    if given.is_file():
        return given
    name = Path(path).name
    shipped = CONFIGS_DIR / (name if Path(path).suffix in (".yaml", ".yml") else f"{name}.yaml")
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml")))
    raise ConfigError(f"config file {path} not found; pass an existing YAML with --config, or one of the shipped "
                      f"configs by name: {names}")


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    path = resolve_config_path(path)
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML ({str(err).splitlines()[0]}); fix the syntax") from None
    if not isinstance(config, dict):
        raise ConfigError(f"config file {path} must be a YAML mapping of key: value, got {type(config).__name__}")
    return config


@dataclasses.dataclass(frozen=True)
class Leaf:
    path: tuple[str, ...]  # ("data", "synthetic", "seed")
    annotation: Any
    field: dataclasses.Field
    owner: type

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


@functools.cache  # called per field; resolving a large foreign class's annotations is slow
def _hints(cls) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # a foreign class whose annotations do not resolve here: use them as written
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _section_type(annotation) -> type | None:
    return annotation if isinstance(annotation, type) and dataclasses.is_dataclass(annotation) else None


def sections(cls, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], type]:
    """Every section of the tree: path -> dataclass (the root is the empty path)."""
    found = {prefix: cls}
    for f in dataclasses.fields(cls):
        sub = _section_type(_hints(cls).get(f.name))
        if f.init and sub is not None:
            found.update(sections(sub, prefix + (f.name,)))
    return found


def leaves(cls) -> list[Leaf]:
    return [Leaf(path + (f.name,), _hints(section).get(f.name, f.type), f, section)
            for path, section in sections(cls).items() for f in dataclasses.fields(section)
            if f.init and _section_type(_hints(section).get(f.name)) is None]


def resolve(name: str, all_leaves: list[Leaf], where: str = "") -> Leaf:
    """The leaf an option (`where` empty) or a YAML key (`where`: the file) names: its path or an unambiguous tail
    of it; a bare name means the shallowest field of that name."""
    parts = tuple(name.replace("-", "_").split("."))
    shown = f"key {name!r} in {where}" if where else f"option --{name}"
    matches = [leaf for leaf in all_leaves if leaf.path[-len(parts):] == parts]
    if matches:
        depth = min(len(leaf.path) for leaf in matches)
        shallowest = [leaf for leaf in matches if len(leaf.path) == depth]
        if len(shallowest) == 1:
            return shallowest[0]
        raise ConfigError(f"{shown} is ambiguous; name one of {', '.join(leaf.dotted for leaf in shallowest)}")
    close = difflib.get_close_matches(parts[-1], {leaf.path[-1] for leaf in all_leaves}, n=3)
    dash = "" if where else "--"
    hint = f" (did you mean {', '.join(dash + c for c in close)}?)" if close else ""
    raise ConfigError(f"unknown {shown}{hint}; " + ("remove it or fix its name" if where else "see --help for the options"))


_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def _convert(value: Any, annotation: Any, where: str) -> Any:
    """`value` as `annotation`. Strings (the command line, quoted YAML) are parsed; other YAML values are checked."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if isinstance(value, list) and len(value) == 1 and not any(typing.get_origin(m) in (list, tuple) for m in members):
            value = value[0]
        if (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))) and type(None) in args:
            return None
        if len(members) == 1:
            return _convert(value, members[0], where)
        if str in members and isinstance(value, str):
            return value  # e.g. TRL's `Union[SchedulerType, str]`: the class itself parses the string
        for member in members:
            try:
                return _convert(value, member, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: cannot read {value!r} as {annotation}; see --help for the type")
    if origin in (list, tuple) or annotation in (list, tuple):
        items = value if isinstance(value, (list, tuple)) else [value]
        return [_convert(v, args[0], where) for v in items] if args else list(items)
    if isinstance(value, list):  # command-line values arrive as a list of words
        if len(value) != 1:
            raise ConfigError(f"{where} takes one value, got {len(value)}: {' '.join(map(str, value))}")
        value = value[0]
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if annotation is bool:
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        if not isinstance(value, bool):
            raise ConfigError(f"{where} takes true or false, got {value!r}")
        return value
    if annotation in (int, float):
        number = _number(value)
        if annotation is int and isinstance(number, float) and number.is_integer():
            number = int(number)
        if number is None or (annotation is int and not isinstance(number, int)):
            raise ConfigError(f"{where} takes {'an integer' if annotation is int else 'a number'}, got {value!r}")
        return annotation(number)
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where} takes one string, got {value!r}")
        return str(value)
    if annotation is dict or origin is dict:
        if isinstance(value, str):  # a mapping on the command line: JSON is the one way to write it there
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ConfigError(f"{where} takes a mapping, e.g. '{{\"key\": 1}}', got {value!r}") from None
        if not isinstance(value, dict):
            raise ConfigError(f"{where} takes a mapping, got {value!r}")
        return value
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        try:
            return annotation(value)
        except ValueError:
            choices = ", ".join(str(m.value) for m in annotation)
            raise ConfigError(f"{where} must be one of {choices}, got {value!r}") from None
    return value  # any other type: the class's own __post_init__ checks it


def _number(value: Any) -> int | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    for parse in (int, float):
        try:
            return parse(value)
        except (TypeError, ValueError):
            continue
    return None


def _is_flag(leaf: Leaf) -> bool:
    """A field that may be given as a bare `--name` (meaning true)."""
    annotation = leaf.annotation
    return annotation is bool or (typing.get_origin(annotation) in (typing.Union, types.UnionType)
                                  and bool in typing.get_args(annotation))


def _flatten_yaml(mapping: dict, cls, prefix: tuple[str, ...], all_leaves, source: str, out: dict) -> None:
    """YAML values as {leaf: value}; sections recurse, a string section includes another config file."""
    section_types = {name: sub for name, sub in ((f.name, _section_type(_hints(cls).get(f.name)))
                                                 for f in dataclasses.fields(cls)) if sub is not None}
    mapping = dict(mapping)
    if INCLUDE_KEY in mapping and INCLUDE_KEY not in {f.name for f in dataclasses.fields(cls)}:
        included = mapping.pop(INCLUDE_KEY)
        _flatten_yaml(load_yaml_config(included), cls, prefix, all_leaves, str(included), out)
    for key, value in mapping.items():
        key = str(key).replace("-", "_")
        if key in section_types:
            if isinstance(value, str):
                value = {INCLUDE_KEY: value}
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: section {'.'.join(prefix + (key,))} must be a mapping or the name of a config")
            _flatten_yaml(value, section_types[key], prefix + (key,), all_leaves, source, out)
            continue
        own = {leaf.path[-1]: leaf for leaf in all_leaves if leaf.path[:-1] == prefix}
        if key not in own:  # YAML mirrors the tree exactly: a key is a field of its own section
            raise ConfigError(_unknown_yaml_key(key, prefix, own, all_leaves, source))
        out[own[key]] = value


def _unknown_yaml_key(key: str, prefix: tuple[str, ...], own: dict, all_leaves: list[Leaf], source: str) -> str:
    where = f"{source}" + (f" (section {'.'.join(prefix)})" if prefix else "")
    elsewhere = sorted((leaf.dotted for leaf in all_leaves if leaf.path[-1] == key), key=lambda p: p.count("."))
    if elsewhere:
        hint = f" (it is a field of {' / '.join(path.rsplit('.', 1)[0] for path in elsewhere)}: move it into that section)"
    else:
        close = difflib.get_close_matches(key, own, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"unknown key {key!r} in {where}{hint}; remove it or fix its name"


def _split_argv(argv: list[str]) -> tuple[str | None, list[tuple[str, list[str]]]]:
    """(--config value, [(option name, its values)]) from argv; `--name=value` works too."""
    options = []
    for token in argv:
        if token.startswith("--") and len(token) > 2 and _number(token) is None:
            name, eq, value = token[2:].partition("=")
            options.append((name, [value] if eq else []))
        elif options:
            options[-1][1].append(token)
        else:
            raise ConfigError(f"unexpected argument {token!r}; options look like --name value")
    configs = [values for name, values in options if name == "config"]
    if any(len(values) != 1 for values in configs):
        raise ConfigError("--config needs one YAML file or shipped config name, e.g. --config pretrain_tiny")
    return (configs[-1][0] if configs else None), [(n, v) for n, v in options if n != "config"]


def _build(cls, prefix: tuple[str, ...], values: dict[tuple[str, ...], Any]):
    kwargs = {}
    for f in dataclasses.fields(cls):
        path, sub = prefix + (f.name,), _section_type(_hints(cls).get(f.name))
        if f.init and sub is not None:
            kwargs[f.name] = _build(sub, path, values)
        elif path in values:  # only init fields are leaves
            kwargs[f.name] = values[path]
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:  # a foreign class (TRL, transformers) rejecting a combination
        where = ".".join(prefix) or cls.__name__
        raise ConfigError(f"{where}: {str(err).splitlines()[0]}") from None


def parse_config(root_cls, argv: list[str], prog: str, default_config: str | None = None):
    """Build `root_cls` from `--config` (else `default_config`) and the other options; `--help` prints them all."""
    all_leaves = leaves(root_cls)
    wants_help = bool({"-h", "--help"} & set(argv))
    config_name, options = _split_argv([arg for arg in argv if arg not in ("-h", "--help")])
    config_name = config_name or default_config
    raw: dict[Leaf, Any] = {}
    if config_name is not None:
        _flatten_yaml(load_yaml_config(config_name), root_cls, (), all_leaves, str(config_name), raw)
    if wants_help:
        print_help(root_cls, all_leaves, raw, prog, config_name)
        raise SystemExit(0)
    from_command_line = set()
    for name, given in options:
        leaf = resolve(name, all_leaves)
        if not given and not _is_flag(leaf):
            raise ConfigError(f"option --{name} needs a value")
        raw[leaf] = given if given else ["true"]
        from_command_line.add(leaf)
    values = {}
    for leaf, value in raw.items():
        source = "the command line" if leaf in from_command_line else config_name
        values[leaf.path] = _convert(value, leaf.annotation, f"{leaf.dotted} (from {source})")
    return _build(root_cls, (), values)


def print_help(root_cls, all_leaves: list[Leaf], raw: dict, prog: str, config_name: str | None) -> None:
    doc = (root_cls.__doc__ or "").strip().splitlines()[0] if root_cls.__doc__ else ""
    lines = [f"usage: {prog} [--config NAME_OR_YAML] [--SECTION.FIELD VALUE ...] [--debug]", "", doc,
             f"config: {config_name or 'none'} (its values are shown as the defaults below)" if config_name else ""]
    current = None
    for leaf in all_leaves:
        foreign = not leaf.owner.__module__.startswith("hfscratch")
        if leaf.path[:-1] != current:
            current = leaf.path[:-1]
            title = ".".join(current) or "options"
            lines += ["", f"{title} ({leaf.owner.__module__.split('.')[0]}.{leaf.owner.__name__})" if foreign else f"{title}:"]
            if foreign:
                lines.append("  every field of that class works (see its documentation); set in this config:")
        if foreign and leaf not in raw:
            continue
        factory = leaf.field.default_factory
        default = raw[leaf] if leaf in raw else factory() if factory is not dataclasses.MISSING else leaf.field.default
        help_text = (str(leaf.field.metadata.get("help") or "").splitlines() or [""])[0]
        lines.append(f"  --{leaf.dotted:<34} {help_text} (default: {default})")
    print("\n".join(lines))
