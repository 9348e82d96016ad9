"""Checks of the deployment files in ``deploy/``, without Docker, a cluster or systemd.

Every YAML file parses (all its documents); the compose file, the Kubernetes objects, the systemd
units, the Dockerfile and the Prometheus files have the shape deploy/README.md describes; every
``recall`` and ``celery`` command they use exists (sub-commands and options, through click), and
every ``RECALL_*`` variable they name is one the settings read (``config.settings.ENVIRONMENT``).

PyYAML is not a dependency of the project, so the YAML files are read by ``load_yaml``, a strict
reader of the YAML subset the deploy files use (block mappings and sequences, flow collections on
one line, quoted and plain scalars, ``|`` block scalars, anchors, aliases and ``<<`` merges). It
refuses anything outside that subset, and scalars that YAML 1.1 readers turn into surprises
(``yes``, ``0755``, ``1:20``, dates): quote those. Where PyYAML is importable, the reader is
cross-checked against it on every file.
"""

from __future__ import annotations

import configparser
import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from config.settings import ENVIRONMENT, Settings
from worker.cli import main
from worker.domain.rules import load_rules
from worker.names import CALL_RESULTS_QUEUE

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
PROMETHEUS = DEPLOY / "prometheus"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"

METRICS_PORT = 9547
FLOWER_PORT = 5555
API_PORT = 8080
RECALL_HOME = "/var/lib/recall"
BEAT_SCHEDULE = f"{RECALL_HOME}/celerybeat-schedule"
IMAGE = "recall-scheduler"
#: The image's ENTRYPOINT (checked against the Dockerfile below): a container of our image that
#: does not override it runs ``recall`` with its command or args.
IMAGE_ENTRYPOINT = ("recall",)
CELERY_APP = "worker.app"
CELERY_SUBCOMMANDS = {"worker", "beat", "flower", "inspect", "status"}
UID = 10001


# --- a strict reader for the YAML subset of the deploy files ----------------------------------


class YamlError(ValueError):
    """A YAML file outside the subset ``load_yaml`` reads, or broken."""


_NULLS = {"", "~", "null", "Null", "NULL"}
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
#: Plain scalars that YAML 1.1 readers (PyYAML) turn into booleans: refused, quote them.
_YAML11_BOOLS = {"yes", "Yes", "YES", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF"}
_YAML11_BOOLS |= {"y", "Y", "n", "N"}
_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
_FLOAT = re.compile(r"[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)")
#: Octal, hex, binary, sexagesimal, exponents, inf/nan, underscores, dates: refused unquoted.
_AMBIGUOUS = re.compile(
    r"[-+]?0[0-9_]+|[-+]?0[xXoObB].*|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?"
    r"|[-+]?[0-9._]*[eE][-+]?[0-9]+|[-+]?\.(?:inf|Inf|INF|nan|NaN|NAN)"
    r"|[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}.*|[-+]?[0-9.]*_[0-9_.]*|=|<<"
)
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "n": "\n", "t": "\t", "r": "\r", "0": "\0", " ": " "}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}
_UNSUPPORTED_START = "!%@`?"


def _plain(text: str, where: str) -> Any:
    """A plain scalar (comment already removed), resolved like YAML's core schema."""
    if ": " in text or text.endswith(":"):
        raise YamlError(f"{where}: ': ' inside a plain scalar (quote it): {text!r}")
    if text in _NULLS:
        return None
    if text in _BOOLS:
        return _BOOLS[text]
    if text in _YAML11_BOOLS or _AMBIGUOUS.fullmatch(text):
        raise YamlError(f"{where}: ambiguous plain scalar {text!r}: quote it")
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text


def _quoted(text: str, start: int, where: str) -> tuple[str, int]:
    """The quoted scalar at ``text[start]``, and the index just after its closing quote."""
    quote, out, i = text[start], [], start + 1
    while i < len(text):
        char = text[i]
        if quote == "'" and char == "'":
            if text[i + 1 : i + 2] == "'":
                out.append("'")
                i += 2
                continue
            return "".join(out), i + 1
        if quote == '"' and char == '"':
            return "".join(out), i + 1
        if quote == '"' and char == "\\":
            code = text[i + 1 : i + 2]
            if code in _ESCAPES:
                out.append(_ESCAPES[code])
                i += 2
                continue
            if code in _HEX_ESCAPES:
                digits = text[i + 2 : i + 2 + _HEX_ESCAPES[code]]
                if len(digits) != _HEX_ESCAPES[code] or not re.fullmatch(r"[0-9a-fA-F]+", digits):
                    raise YamlError(f"{where}: bad escape \\{code}{digits}")
                out.append(chr(int(digits, 16)))
                i += 2 + len(digits)
                continue
            raise YamlError(f"{where}: unsupported escape \\{code}")
        out.append(char)
        i += 1
    raise YamlError(f"{where}: unterminated (or multi-line) quoted scalar")


def _strip_comment(text: str) -> str:
    """``text`` without a trailing `` #`` comment (for plain scalars and headers)."""
    cut = text.find(" #")
    return (text if cut == -1 else text[:cut]).rstrip()


def _expect_end(rest: str, where: str) -> None:
    rest = rest.strip(" ")
    if rest and not rest.startswith("#"):
        raise YamlError(f"{where}: unexpected text after the value: {rest!r}")


def _is_item(text: str) -> bool:
    return text == "-" or text.startswith("- ")


class _Flow:
    """A flow collection (``[...]`` or ``{...}``) that ends on the line it starts."""

    def __init__(self, text: str, anchors: dict[str, Any], where: str) -> None:
        self.text, self.i, self.anchors, self.where = text, 0, anchors, where

    def _skip(self) -> None:
        while self.i < len(self.text) and self.text[self.i] == " ":
            self.i += 1

    def _peek(self) -> str:
        self._skip()
        if self.i >= len(self.text):
            raise YamlError(f"{self.where}: multi-line flow collections are not supported")
        return self.text[self.i]

    def value(self) -> Any:
        char = self._peek()
        if char in "[{":
            return self._collection(char)
        if char in "\"'":
            value, self.i = _quoted(self.text, self.i, self.where)
            return value
        if char == "*":
            match = re.compile(r"\*([^ ,\[\]{}]+)").match(self.text, self.i)
            if match is None or match.group(1) not in self.anchors:
                raise YamlError(f"{self.where}: unknown alias at {self.text[self.i :]!r}")
            self.i = match.end()
            return self.anchors[match.group(1)]
        if char in _UNSUPPORTED_START + "&|>":
            raise YamlError(f"{self.where}: unsupported {char!r} in a flow collection")
        start = self.i
        while self.i < len(self.text):
            char = self.text[self.i]
            following = self.text[self.i + 1 : self.i + 2]
            if char in ",[]{}" or (char == ":" and following in (" ", ",", "]", "}", "")):
                break
            if char == "#" and self.text[self.i - 1] == " ":
                break
            self.i += 1
        return _plain(self.text[start : self.i].strip(" "), self.where)

    def _collection(self, opening: str) -> Any:
        closing = "]" if opening == "[" else "}"
        self.i += 1
        items: list[Any] = []
        mapping: dict[Any, Any] = {}
        while self._peek() != closing:
            item = self.value()
            if opening == "{":
                if self._peek() != ":":
                    raise YamlError(f"{self.where}: expected ':' in a flow mapping")
                self.i += 1
                if item in mapping:
                    raise YamlError(f"{self.where}: duplicate key {item!r}")
                mapping[item] = None if self._peek() in ",}" else self.value()
            else:
                items.append(item)
            if self._peek() == ",":
                self.i += 1
            elif self._peek() != closing:
                raise YamlError(f"{self.where}: expected ',' or {closing!r}")
        self.i += 1
        return mapping if opening == "{" else items


@dataclass(frozen=True)
class _Line:
    number: int
    indent: int
    text: str


class _Reader:
    """One YAML document: a recursive descent over its lines, by indentation."""

    def __init__(self, lines: list[tuple[int, str]], name: str) -> None:
        self.raw = lines
        self.pos = 0
        self.name = name
        self.anchors: dict[str, Any] = {}

    def where(self, number: int) -> str:
        return f"{self.name}:{number}"

    def peek(self) -> _Line | None:
        """The next line with content (blank and comment-only lines are skipped)."""
        while self.pos < len(self.raw):
            number, raw = self.raw[self.pos]
            text = raw.lstrip(" ")
            if text.startswith("\t"):
                raise YamlError(f"{self.where(number)}: tab in indentation")
            if not text.strip() or text.startswith("#"):
                self.pos += 1
                continue
            return _Line(number, len(raw) - len(text), text.rstrip())
        return None

    def document(self) -> Any:
        line = self.peek()
        if line is None:
            return None
        value = self.node(line.indent)
        rest = self.peek()
        if rest is not None:
            raise YamlError(f"{self.where(rest.number)}: unexpected indentation")
        return value

    def node(self, indent: int) -> Any:
        line = self.peek()
        assert line is not None
        if _is_item(line.text):
            return self.sequence(indent)
        if self.split_key(line.text, line.number) is None:
            if self.pos == 0:  # a document that is one scalar
                self.pos += 1
                return self.inline(line.text, -1, line.number)
            raise YamlError(f"{self.where(line.number)}: expected 'key: value' or '- item'")
        return self.mapping(indent)

    def split_key(self, text: str, number: int) -> tuple[Any, str] | None:
        """``(key, rest of the line)`` when ``text`` is a mapping entry, else None."""
        where = self.where(number)
        if text[0] in "\"'":
            key, end = _quoted(text, 0, where)
            after = text[end:]
            if after.startswith(":") and after[1:2] in ("", " "):
                return key, after[1:]
            return None
        if text[0] in "[{":
            return None
        body = _strip_comment(text)
        colon = body.find(": ")
        if colon == -1 and body.endswith(":"):
            colon = len(body) - 1
        if colon == -1:
            return None
        key_text = body[:colon].rstrip(" ")
        if not key_text or key_text[0] in _UNSUPPORTED_START + "&*|>":
            raise YamlError(f"{where}: unsupported mapping key {key_text!r}")
        key = "<<" if key_text == "<<" else _plain(key_text, where)
        return key, text[colon + 1 :]

    def mapping(self, indent: int) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        merged: list[dict[Any, Any]] = []
        line = self.peek()
        while line is not None and line.indent == indent and not _is_item(line.text):
            split = self.split_key(line.text, line.number)
            if split is None:
                raise YamlError(f"{self.where(line.number)}: expected 'key: value'")
            key, rest = split
            self.pos += 1
            value = self.value(rest, indent, line.number, in_mapping=True)
            if key == "<<":
                sources = value if isinstance(value, list) else [value]
                if not all(isinstance(source, dict) for source in sources):
                    raise YamlError(f"{self.where(line.number)}: '<<' needs mappings")
                merged.extend(sources)
            elif key in result:
                raise YamlError(f"{self.where(line.number)}: duplicate key {key!r}")
            else:
                result[key] = value
            line = self.peek()
        if line is not None and line.indent >= indent:
            raise YamlError(f"{self.where(line.number)}: unexpected indentation or item")
        if not merged:
            return result
        combined: dict[Any, Any] = {}
        for source in reversed(merged):  # the first merged mapping wins over later ones
            combined.update(source)
        combined.update(result)  # and the mapping's own keys win over all of them
        return combined

    def sequence(self, indent: int) -> list[Any]:
        items: list[Any] = []
        line = self.peek()
        while line is not None and line.indent == indent and _is_item(line.text):
            content = line.text[1:]
            text = content.lstrip(" ")
            column = indent + 1 + len(content) - len(text)
            if not text or text.startswith("#"):
                self.pos += 1
                items.append(self.nested(indent, in_mapping=False))
            elif _is_item(text) or self.split_key(text, line.number) is not None:
                # "- key: value" or "- - item": the rest of the line opens a node at its column.
                self.raw[self.pos] = (line.number, " " * column + text)
                items.append(self.node(column))
            else:
                self.pos += 1
                items.append(self.value(text, indent, line.number, in_mapping=False))
            line = self.peek()
        if line is not None and line.indent > indent:
            raise YamlError(f"{self.where(line.number)}: unexpected indentation")
        return items

    def nested(self, indent: int, *, in_mapping: bool) -> Any:
        """The block node under a key or item with nothing after it on its line (or null)."""
        line = self.peek()
        if line is None:
            return None
        if line.indent > indent:
            return self.node(line.indent)
        if in_mapping and line.indent == indent and _is_item(line.text):
            return self.sequence(indent)
        return None

    def value(self, rest: str, indent: int, number: int, *, in_mapping: bool) -> Any:
        text = rest.strip(" ")
        anchor = None
        if text.startswith("&"):
            anchor, _, text = text[1:].partition(" ")
            text = text.strip(" ")
            if not re.fullmatch(r"[A-Za-z0-9_-]+", anchor):
                raise YamlError(f"{self.where(number)}: unsupported anchor name {anchor!r}")
        if not text or text.startswith("#"):
            value = self.nested(indent, in_mapping=in_mapping)
        else:
            value = self.inline(text, indent, number)
        if anchor is not None:
            self.anchors[anchor] = value
        return value

    def inline(self, text: str, indent: int, number: int) -> Any:
        where = self.where(number)
        first = text[0]
        if first == "*":
            name, _, rest = text[1:].partition(" ")
            _expect_end(rest, where)
            if name not in self.anchors:
                raise YamlError(f"{where}: unknown alias *{name}")
            return self.anchors[name]
        if first in "|>":
            return self.block_scalar(_strip_comment(text), indent, where)
        if first in "[{":
            flow = _Flow(text, self.anchors, where)
            value = flow.value()
            _expect_end(text[flow.i :], where)
            return value
        if first in "\"'":
            value, end = _quoted(text, 0, where)
            _expect_end(text[end:], where)
            return value
        if first in _UNSUPPORTED_START + "&" or _is_item(text):
            raise YamlError(f"{where}: unsupported YAML here: {text!r}")
        return _plain(_strip_comment(text), where)

    def block_scalar(self, header: str, indent: int, where: str) -> str:
        if header not in ("|", "|-"):
            raise YamlError(f"{where}: only '|' and '|-' block scalars are supported")
        lines: list[str] = []
        content_indent: int | None = None
        while self.pos < len(self.raw):
            _, raw = self.raw[self.pos]
            if not raw.strip(" "):
                lines.append("")
                self.pos += 1
                continue
            current = len(raw) - len(raw.lstrip(" "))
            if content_indent is None:
                if current <= indent:
                    break
                content_indent = current
            elif current < content_indent:
                break
            lines.append(raw[content_indent:])
            self.pos += 1
        while lines and not lines[-1]:
            lines.pop()
        if not lines:
            return ""
        return "\n".join(lines) + ("" if header == "|-" else "\n")


def parse_yaml(text: str, name: str = "<yaml>") -> list[Any]:
    """Every document of a YAML stream (of the subset described in the module docstring)."""
    documents: list[list[tuple[int, str]]] = [[]]
    explicit_start = False
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith(("%", "...")):
            raise YamlError(f"{name}:{number}: directives and '...' are not supported")
        if line == "---" or line.startswith("--- #"):
            if not documents[-1] or all(
                not raw.strip() or raw.lstrip().startswith("#") for _, raw in documents[-1]
            ):
                documents[-1] = []
                if len(documents) > 1 or explicit_start:
                    documents.append([])
            else:
                documents.append([])
            explicit_start = True
            continue
        if line.startswith("---"):
            raise YamlError(f"{name}:{number}: content after '---' is not supported")
        documents[-1].append((number, line))
    return [_Reader(lines, name).document() for lines in documents]


@cache
def load_yaml(path: Path) -> tuple[Any, ...]:
    return tuple(parse_yaml(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT))))


def yaml_files() -> list[Path]:
    return sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])


# --- the files, read --------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    (document,) = load_yaml(COMPOSE)
    assert isinstance(document, dict)
    return document


def compose_services() -> dict[str, dict[str, Any]]:
    services = compose()["services"]
    assert isinstance(services, dict)
    return services


def k8s_objects() -> list[tuple[Path, dict[str, Any]]]:
    objects = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for document in load_yaml(path):
            if document is not None:
                assert isinstance(document, dict), path
                objects.append((path, document))
    return objects


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    found = [o for _, o in k8s_objects() if o.get("kind") == kind and _name(o) == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _name(obj: dict[str, Any]) -> str | None:
    metadata = obj.get("metadata")
    return metadata.get("name") if isinstance(metadata, dict) else None


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec of a workload object (Deployment, Job, ...), else None."""
    if obj.get("kind") == "Pod":
        spec: dict[str, Any] = obj["spec"]
        return spec
    template = obj.get("spec", {}).get("template") if isinstance(obj.get("spec"), dict) else None
    return template.get("spec") if isinstance(template, dict) else None


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def ours(image: Any) -> bool:
    return isinstance(image, str) and image.split("/")[-1].split(":")[0] == IMAGE


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text(encoding="utf-8"), source=str(path))
    return parser


def env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
            pairs[key.strip()] = value
    return pairs


@dataclass(frozen=True)
class Instruction:
    stage: int
    keyword: str
    arguments: str


def dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending = f"{pending} {stripped}" if pending else stripped
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        keyword, _, arguments = pending.partition(" ")
        keyword = keyword.upper()
        stage += keyword == "FROM"
        instructions.append(Instruction(stage, keyword, arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends in a continuation line"
    return instructions


def exec_form(instruction: Instruction) -> list[str]:
    value = json.loads(instruction.arguments)
    assert isinstance(value, list), f"{instruction.keyword} is not in exec (JSON) form"
    return [str(item) for item in value]


def final_stage() -> list[Instruction]:
    instructions = dockerfile()
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


# --- every command the deploy files run -------------------------------------------------------


@dataclass(frozen=True)
class Command:
    where: str
    argv: tuple[str, ...]

    @property
    def program(self) -> str | None:
        name = self.argv[0].rsplit("/", 1)[-1] if self.argv else ""
        return name if name in ("recall", "celery") else None


def _argv(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(item) for item in value]


def dockerfile_commands() -> Iterator[Command]:
    final = final_stage()
    entrypoint = [exec_form(i) for i in final if i.keyword == "ENTRYPOINT"]
    cmd = [exec_form(i) for i in final if i.keyword == "CMD"]
    argv = (entrypoint[-1] if entrypoint else []) + (cmd[-1] if cmd else [])
    yield Command("deploy/Dockerfile ENTRYPOINT+CMD", tuple(argv))


def _compose_service_argv(service: dict[str, Any], args: list[str]) -> list[str]:
    if "entrypoint" in service:
        return _argv(service["entrypoint"]) + args
    if "build" in service or ours(service.get("image")):
        return [*IMAGE_ENTRYPOINT, *args]
    return args


def compose_commands() -> Iterator[Command]:
    for name, service in compose_services().items():
        argv = _compose_service_argv(service, _argv(service.get("command")))
        yield Command(f"compose service {name}", tuple(argv))
        test = _argv(service.get("healthcheck", {}).get("test"))
        if test[:1] == ["CMD"]:
            yield Command(f"compose service {name} healthcheck", tuple(test[1:]))
        elif test[:1] == ["CMD-SHELL"]:
            yield Command(f"compose service {name} healthcheck", tuple(shlex.split(test[1])))


def kubernetes_commands() -> Iterator[Command]:
    for path, obj in k8s_objects():
        spec = pod_spec(obj)
        for container in containers(spec) if spec else []:
            where = f"{path.name} {obj['kind']} {_name(obj)} container {container.get('name')}"
            command = _argv(container.get("command"))
            if not command and ours(container.get("image")):
                command = list(IMAGE_ENTRYPOINT)
            yield Command(where, tuple(command + _argv(container.get("args"))))
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                exec_ = container.get(probe, {}).get("exec")
                if exec_:
                    yield Command(f"{where} {probe}", tuple(_argv(exec_.get("command"))))


def systemd_commands() -> Iterator[Command]:
    keys = ("ExecStartPre", "ExecStart", "ExecStartPost", "ExecReload", "ExecStop", "ExecStopPost")
    for path in sorted(SYSTEMD.glob("*.service")):
        service = unit(path)["Service"]
        for key in keys:
            if key in service:
                line = service[key].lstrip("-@+!:")
                argv = [word for word in shlex.split(line) if not word.startswith("$")]
                yield Command(f"{path.name} {key}", tuple(argv))


def _readme_segments(text: str) -> Iterator[list[str]]:
    """Shell segments (split at ``&&``, ``;``, ``|``, parentheses) of the fenced code blocks."""
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            segment: list[str] = []
            for token in lexer:
                if token and set(token) <= set("();<>|&"):
                    if segment:
                        yield segment
                    segment = []
                else:
                    segment.append(token)
            if segment:
                yield segment


def readme_commands() -> Iterator[Command]:
    services = compose_services()
    for segment in _readme_segments((DEPLOY / "README.md").read_text(encoding="utf-8")):
        where = f"deploy/README.md: {' '.join(segment)}"
        words = list(segment)
        while words and (re.match(r"[A-Za-z_][A-Za-z0-9_]*=", words[0]) or words[0] == "sudo"):
            words.pop(0)
        if "--" in words:  # kubectl exec ... -- recall ...
            yield Command(where, tuple(words[words.index("--") + 1 :]))
        elif words[:2] == ["docker", "compose"] and "run" in words:
            # docker compose [-f FILE] run [--rm] SERVICE ARGS...: the service's own entrypoint.
            rest = words[words.index("run") + 1 :]
            while rest and rest[0].startswith("-"):
                rest.pop(0)
            if rest and rest[0] in services:
                yield Command(where, tuple(_compose_service_argv(services[rest[0]], rest[1:])))
        else:
            yield Command(where, tuple(words))


@cache
def all_commands() -> tuple[Command, ...]:
    sources = (
        dockerfile_commands,
        compose_commands,
        kubernetes_commands,
        systemd_commands,
        readme_commands,
    )
    return tuple(command for source in sources for command in source())


def commands_of(program: str) -> list[Command]:
    return [command for command in all_commands() if command.program == program]


def _unknown_options(tokens: list[str], command: click.Command) -> list[str]:
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    names = [token.split("=", 1)[0] for token in tokens if token.startswith("-") and token != "-"]
    return [name for name in names if name not in known]


def _celery_command(name: str) -> click.Command | None:
    from celery.bin.celery import celery

    command = celery.commands.get(name)
    return command if isinstance(command, click.Command) else None


def recall_problem(argv: tuple[str, ...]) -> str | None:
    """Why ``argv`` (``recall ...``) would not run, or None."""
    args = list(argv[1:])
    command: click.Command = main
    path: list[str] = []
    while isinstance(command, click.Group):
        if not args or args[0].startswith("-"):
            return f"'recall {' '.join(path)}' needs a sub-command"
        name = args.pop(0)
        sub = command.get_command(click.Context(command), name)  # lazy commands load here
        if sub is None:
            return f"'recall {' '.join([*path, name])}': no such command"
        command, path = sub, [*path, name]
    result = CliRunner().invoke(main, [*path, "--help"])
    if result.exit_code != 0:
        return f"'recall {' '.join(path)} --help' exited {result.exit_code}: {result.output}"
    try:
        context = command.make_context(f"recall {' '.join(path)}", args)
    except click.ClickException as error:
        return f"'recall {' '.join([*path, *args])}': {error.format_message()}"
    if path == ["worker"]:  # the rest goes to `celery worker`
        celery_worker = _celery_command("worker")
        assert celery_worker is not None
        passed = [*context.params["celery_args"], *context.args]
        unknown = _unknown_options(passed, celery_worker)
        if unknown:
            return f"'recall worker': not options of celery worker: {unknown}"
    return None


def celery_problem(argv: tuple[str, ...]) -> str | None:
    """Why ``argv`` (``celery -A worker.app SUB ...``) would not run, or None."""
    args = list(argv[1:])
    app = None
    while args and args[0].startswith("-"):
        option = args.pop(0)
        if option in ("-A", "--app") and args:
            app = args.pop(0)
        elif option.startswith("--app="):
            app = option.split("=", 1)[1]
        else:
            return f"unexpected celery option {option!r} before the sub-command"
    if app != CELERY_APP:
        return f"the app must be -A {CELERY_APP}, got {app!r}"
    if not args or args[0] not in CELERY_SUBCOMMANDS:
        return f"sub-command must be one of {sorted(CELERY_SUBCOMMANDS)}, got {args[:1]}"
    name, rest = args[0], args[1:]
    command = _celery_command(name)
    if command is None:
        return f"'celery {name}' is not installed"
    if name == "flower":  # Flower's own options are tornado options
        from flower.options import options

        names = [t[2:].split("=", 1)[0] for t in rest if t.startswith("--")]
        unknown = [n for n in names if n not in options]
    else:
        unknown = _unknown_options(rest, command)
    return f"not options of celery {name}: {unknown}" if unknown else None


def runs_beat(argv: tuple[str, ...]) -> bool:
    """True for the dispatcher: ``celery ... beat`` or a ``recall worker`` with beat embedded."""
    program = argv[0].rsplit("/", 1)[-1] if argv else ""
    if program == "celery":
        return "beat" in argv or "-B" in argv or "--beat" in argv
    return program == "recall" and argv[1:2] == ("worker",) and "--no-beat" not in argv


def deploy_files() -> list[Path]:
    return sorted(path for path in DEPLOY.rglob("*") if path.is_file())


# --- the YAML reader itself -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: 1\nb: x # note\nc:\nd: 'it''s'\n", [{"a": 1, "b": "x", "c": None, "d": "it's"}]),
        (
            "a:\n- 1\n- two\nb: [x, 'y', {k: v}, {}]\n",
            [{"a": [1, "two"], "b": ["x", "y", {"k": "v"}, {}]}],
        ),
        (
            "- name: a\n  value: '1'\n-\n  - nested\n- - inner\n",
            [[{"name": "a", "value": "1"}, ["nested"], ["inner"]]],
        ),
        (
            "base: &b\n  p: 1\n  q: 2\nuse:\n  <<: *b\n  q: 3\nalias: *b\n",
            [{"base": {"p": 1, "q": 2}, "use": {"p": 1, "q": 3}, "alias": {"p": 1, "q": 2}}],
        ),
        (
            "s: |\n  line 1\n\n    indented\nt: |-\n  kept\nu: end\n",
            [{"s": "line 1\n\n  indented\n", "t": "kept", "u": "end"}],
        ),
        (
            'q: "a\\"b\\u00e9\\n"\nr: "${X:?set X=user:pw}"\n',
            [{"q": 'a"bé\n', "r": "${X:?set X=user:pw}"}],
        ),
        ("# head\n---\na: 1\n---\nb: true\n", [{"a": 1}, {"b": True}]),
        (
            "url: redis://h:6379/0\nratio: 0.5\nport: '9547'\n",
            [{"url": "redis://h:6379/0", "ratio": 0.5, "port": "9547"}],
        ),
    ],
)
def test_yaml_reader_reads_the_subset(text: str, expected: list[Any]) -> None:
    assert parse_yaml(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "restart: no\n",  # a YAML 1.1 boolean
        "mode: 0755\n",  # octal
        "t: 1:20\n",  # sexagesimal
        "d: 2026-01-01\n",  # a date
        "a: 1\na: 2\n",  # duplicate key
        "a:\n\t- 1\n",  # tab
        "f: >\n  folded\n",  # folded block scalar
        "l: [1,\n  2]\n",  # multi-line flow
        "x: *missing\n",  # unknown alias
        "s: a: b\n",  # ': ' in a plain scalar
        "a: 1\n  b: 2\n",  # bad indentation
        "t: !!str 1\n",  # tag
    ],
)
def test_yaml_reader_refuses_what_it_does_not_support(text: str) -> None:
    with pytest.raises(YamlError):
        parse_yaml(text)


def test_yaml_reader_agrees_with_pyyaml() -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: no cross-check")
    for path in yaml_files():
        theirs = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
        assert [doc for doc in load_yaml(path) if doc] == theirs, path


# --- every file -------------------------------------------------------------------------------


def test_every_yaml_file_parses() -> None:
    files = yaml_files()
    assert len(files) >= 13
    for path in files:
        documents = [document for document in load_yaml(path) if document is not None]
        assert documents, f"{path}: no document"
        assert all(isinstance(document, dict) for document in documents), path


def test_every_recall_variable_is_a_setting() -> None:
    pattern = re.compile(r"(?<![A-Za-z0-9_])RECALL_[A-Z0-9_]*[A-Z0-9]")
    found: dict[str, set[str]] = {}
    for path in deploy_files():
        for name in pattern.findall(path.read_text(encoding="utf-8")):
            found.setdefault(name, set()).add(str(path.relative_to(DEPLOY)))
    unknown = {name: sorted(files) for name, files in found.items() if name not in ENVIRONMENT}
    assert not unknown, f"not in config.settings.ENVIRONMENT: {unknown}"
    assert {"RECALL_BROKER_URL", "RECALL_DATABASE_URL", "RECALL_RULES"} <= set(found)
    assert "RECALL_METRICS_PORT" in found


def test_every_flower_variable_is_a_flower_option() -> None:
    # Flower reads every FLOWER_* variable as one of its options and refuses to start on another.
    from flower.options import options

    pattern = re.compile(r"(?<![A-Za-z0-9_])FLOWER_([A-Z0-9_]*[A-Z0-9])")
    names = {name for path in deploy_files() for name in pattern.findall(path.read_text("utf-8"))}
    assert "BASIC_AUTH" in names
    assert all(name.lower() in options for name in names), names


def test_commands_are_found_in_every_kind_of_file() -> None:
    wheres = {command.where.split(" ", 1)[0] for command in all_commands() if command.program}
    assert {"deploy/Dockerfile", "compose", "deploy/README.md:"} <= wheres
    assert any(where.endswith(".yaml") for where in wheres)
    assert any(where.endswith(".service") for where in wheres)
    assert commands_of("recall")
    assert commands_of("celery")


def test_every_recall_command_exists() -> None:
    problems = [f"{c.where}: {p}" for c in commands_of("recall") if (p := recall_problem(c.argv))]
    assert not problems, "\n".join(problems)


def test_every_celery_command_exists() -> None:
    problems = [f"{c.where}: {p}" for c in commands_of("celery") if (p := celery_problem(c.argv))]
    assert not problems, "\n".join(problems)


def test_the_checks_catch_commands_that_do_not_exist() -> None:
    assert recall_problem(("recall", "no-such-command"))
    assert recall_problem(("recall", "db"))
    assert recall_problem(("recall", "db", "upgrade", "--no-such-option"))
    assert recall_problem(("recall", "worker", "--no-beat", "--no-such-celery-option"))
    assert recall_problem(("recall", "db", "upgrade")) is None
    assert celery_problem(("celery", "-A", CELERY_APP, "multi", "start"))
    assert celery_problem(("celery", "-A", "other.app", "beat"))
    assert celery_problem(("celery", "-A", CELERY_APP, "beat", "--no-such-option"))
    assert celery_problem(("celery", "-A", CELERY_APP, "flower", "--no-such-option=1"))
    assert celery_problem(("celery", "-A", CELERY_APP, "flower", "--basic-auth=a:b")) is None


# --- Dockerfile -------------------------------------------------------------------------------


def test_dockerfile_is_a_slim_multi_stage_build() -> None:
    instructions = dockerfile()
    froms = [i.arguments.split() for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2, "not a multi-stage build"
    assert all(words[0] == "python:3.11-slim" for words in froms), froms
    build_stages = [i for i in instructions if i.stage < len(froms) - 1]
    assert any(i.keyword == "RUN" and "pip wheel" in i.arguments for i in build_stages)
    final = final_stage()
    installs = [i.arguments for i in final if i.keyword == "RUN" and "pip install" in i.arguments]
    assert any("recall-scheduler[flower]" in run for run in installs), installs
    final_runs = " ".join(i.arguments for i in final if i.keyword == "RUN")
    for tool in ("build-essential", "gcc", "make", "g++"):
        assert not re.search(rf"\b{re.escape(tool)}\b", final_runs), f"{tool} in the final image"


def test_dockerfile_runs_as_the_recall_user_with_its_home() -> None:
    final = final_stage()
    users = [i.arguments for i in final if i.keyword == "USER"]
    assert users, "no USER in the final stage"
    assert users[-1].split(":")[0] in (str(UID), "recall")
    runs = " ".join(i.arguments for i in final if i.keyword == "RUN")
    assert f"--uid {UID}" in runs
    assert re.search(rf"(-o recall|chown [^ ]*recall)[^&]*{RECALL_HOME}", runs)
    envs = " ".join(i.arguments for i in final if i.keyword == "ENV")
    assert f"RECALL_HOME={RECALL_HOME}" in envs


def test_dockerfile_entrypoint_command_ports_and_no_healthcheck() -> None:
    final = final_stage()
    (entrypoint,) = [exec_form(i) for i in final if i.keyword == "ENTRYPOINT"]
    (cmd,) = [exec_form(i) for i in final if i.keyword == "CMD"]
    assert tuple(entrypoint) == IMAGE_ENTRYPOINT
    assert cmd == ["worker"]
    exposed = {p for i in final if i.keyword == "EXPOSE" for p in i.arguments.split()}
    assert {str(METRICS_PORT), str(FLOWER_PORT), str(API_PORT)} <= exposed
    # `recall status --json` judges the whole system, not one container (see the comment).
    assert not [i for i in dockerfile() if i.keyword == "HEALTHCHECK"]


def test_dockerfile_copies_only_what_the_ignore_file_lets_through() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    }
    copies = [i.arguments.split()[:-1] for i in dockerfile() if i.keyword == "COPY"]
    sources = [s for words in copies for s in words if not s.startswith("--")]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert source.rstrip("/") in allowed, f"{source} is excluded from the build context"


def test_metrics_port_matches_the_settings_default() -> None:
    assert Settings.from_env({}).metrics_port == METRICS_PORT


# --- docker compose ---------------------------------------------------------------------------


def test_compose_has_every_service() -> None:
    services = compose_services()
    expected = {"redis", "postgres", "migrate", "worker", "dispatcher", "flower", "api"}
    assert expected <= set(services)
    for name in ("migrate", "worker", "dispatcher", "flower", "api"):
        service = services[name]
        assert ours(service.get("image")) or "build" in service, name
        assert service.get("command"), name
        build = service["build"]
        assert (DEPLOY / build["context"]).resolve() == ROOT
        assert (ROOT / build["dockerfile"]).resolve() == DOCKERFILE


def test_compose_environment_is_shared() -> None:
    env = compose()["x-recall-env"]
    assert env["RECALL_BROKER_URL"].startswith("redis://")
    assert env["RECALL_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["RECALL_METRICS_PORT"] == str(METRICS_PORT)
    for name in ("migrate", "worker", "dispatcher", "flower", "api"):
        service_env = compose_services()[name]["environment"]
        assert {key: service_env[key] for key in env} == env, name


def test_compose_mounts_the_rules_read_only() -> None:
    rules = compose()["x-recall-env"]["RECALL_RULES"]
    for name in ("migrate", "worker", "dispatcher"):
        mounts = [v for v in compose_services()[name]["volumes"] if isinstance(v, dict)]
        (mount,) = [m for m in mounts if m["target"] == rules]
        assert mount["type"] == "bind"
        assert mount["source"] == "./rules.toml"
        assert mount["read_only"] is True


def test_compose_redis_and_postgres_persist() -> None:
    services = compose_services()
    redis, postgres = services["redis"], services["postgres"]
    assert redis["image"] == "redis:7"
    command = _argv(redis["command"])
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(str(v).endswith(":/data") for v in redis["volumes"])
    assert postgres["image"] == "postgres:15"
    assert any(str(v).endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert "pg_isready" in " ".join(_argv(postgres["healthcheck"]["test"]))
    declared = set(compose()["volumes"])
    for service in services.values():
        for volume in service.get("volumes", []):
            if isinstance(volume, str) and not volume.startswith((".", "/")):
                assert volume.split(":")[0] in declared, volume


def test_compose_startup_order() -> None:
    services = compose_services()
    migrate, worker = services["migrate"], services["worker"]
    assert _compose_service_argv(migrate, _argv(migrate["command"])) == ["recall", "db", "upgrade"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    argv = _compose_service_argv(worker, _argv(worker["command"]))
    assert argv[:3] == ["recall", "worker", "--no-beat"]
    assert worker["deploy"]["replicas"] == 2
    conditions = {name: dep["condition"] for name, dep in worker["depends_on"].items()}
    assert conditions["migrate"] == "service_completed_successfully"
    assert "redis" in conditions


def test_compose_runs_exactly_one_dispatcher() -> None:
    services = compose_services()
    beats = {
        name: service
        for name, service in services.items()
        if runs_beat(tuple(_compose_service_argv(service, _argv(service.get("command")))))
    }
    assert list(beats) == ["dispatcher"]
    dispatcher = beats["dispatcher"]
    argv = _compose_service_argv(dispatcher, _argv(dispatcher["command"]))
    assert argv[:4] == ["celery", "-A", CELERY_APP, "beat"]
    assert argv[argv.index("--schedule") + 1] == BEAT_SCHEDULE
    assert dispatcher.get("deploy", {}).get("replicas", 1) == 1


def test_compose_flower_requires_basic_auth() -> None:
    flower = compose_services()["flower"]
    argv = _compose_service_argv(flower, _argv(flower["command"]))
    assert argv[:4] == ["celery", "-A", CELERY_APP, "flower"]
    auth = flower["environment"]["FLOWER_BASIC_AUTH"]
    assert auth.startswith("${FLOWER_BASIC_AUTH:?"), "FLOWER_BASIC_AUTH must be required"
    assert any(str(port).endswith(f":{FLOWER_PORT}") for port in flower["ports"])


# --- Kubernetes -------------------------------------------------------------------------------

EXPECTED_KINDS = {
    "namespace.yaml": {"Namespace"},
    "configmap.yaml": {"ConfigMap"},
    "secret.example.yaml": {"Secret"},
    "migrate-job.yaml": {"Job"},
    "worker-deployment.yaml": {"Deployment"},
    "worker-scaledobject.yaml": {"ScaledObject", "TriggerAuthentication"},
    "dispatcher-deployment.yaml": {"Deployment"},
    "flower-deployment.yaml": {"Deployment"},
    "flower-service.yaml": {"Service"},
    "api-deployment.yaml": {"Deployment"},
    "api-service.yaml": {"Service"},
    "kustomization.yaml": {"Kustomization"},
}


def test_kubernetes_objects_have_their_kinds_and_names() -> None:
    kinds: dict[str, set[str]] = {}
    for path, obj in k8s_objects():
        assert obj.get("apiVersion"), path
        assert obj.get("kind"), path
        if obj["kind"] != "Kustomization":
            assert _name(obj), f"{path}: {obj['kind']} without metadata.name"
        kinds.setdefault(path.name, set()).add(obj["kind"])
    assert kinds == EXPECTED_KINDS


def test_kustomization_lists_everything_but_the_secret_example() -> None:
    (kustomization,) = load_yaml(KUBERNETES / "kustomization.yaml")
    resources = kustomization["resources"]
    expected = set(EXPECTED_KINDS) - {"kustomization.yaml", "secret.example.yaml"}
    assert set(resources) == expected
    assert len(resources) == len(expected)
    (namespace,) = [o for _, o in k8s_objects() if o["kind"] == "Namespace"]
    assert kustomization["namespace"] == _name(namespace)
    for _, obj in k8s_objects():
        if obj["kind"] not in ("Namespace", "Kustomization"):
            assert obj["metadata"].get("namespace") == _name(namespace), _name(obj)


def test_kubernetes_workloads_are_locked_down() -> None:
    workloads = [(p, o) for p, o in k8s_objects() if pod_spec(o) is not None]
    assert len(workloads) == 5
    for path, obj in workloads:
        spec = pod_spec(obj)
        assert spec is not None
        pod_security = spec.get("securityContext", {})
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        template_labels = obj["spec"]["template"]["metadata"]["labels"]
        selector = obj["spec"].get("selector", {}).get("matchLabels", {})
        assert selector.items() <= template_labels.items(), path
        for container in containers(spec):
            where = f"{path.name} {container['name']}"
            security = {**pod_security, **container.get("securityContext", {})}
            assert security.get("runAsNonRoot") is True, where
            assert security.get("runAsUser") == UID, where
            assert security.get("readOnlyRootFilesystem") is True, where
            assert security.get("allowPrivilegeEscalation") is False, where
            assert ours(container["image"]), where
            assert container.get("resources", {}).get("requests"), where
            assert container.get("resources", {}).get("limits"), where
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert RECALL_HOME in mounts, f"{where}: RECALL_HOME is not writable"
            assert "emptyDir" in volumes[mounts[RECALL_HOME]], where


def test_kubernetes_references_resolve() -> None:
    configmaps = {_name(o): o for _, o in k8s_objects() if o["kind"] == "ConfigMap"}
    (secret,) = [o for _, o in k8s_objects() if o["kind"] == "Secret"]
    assert "stringData" in secret
    for path, obj in k8s_objects():
        spec = pod_spec(obj)
        if spec is None:
            continue
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps, path
        for container in containers(spec):
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in configmaps, path
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == _name(secret), path
                    assert ref["key"] in secret["stringData"], path
    env = configmaps["recall-env"]["data"]
    assert all(isinstance(value, str) for value in env.values())
    assert "RECALL_BROKER_URL" not in env
    assert "RECALL_DATABASE_URL" not in env


def test_kubernetes_rules_placeholder_is_a_valid_rules_file(tmp_path: Path) -> None:
    env = k8s_object("ConfigMap", "recall-env")["data"]
    rules = k8s_object("ConfigMap", "recall-rules")
    path = tmp_path / "rules.toml"
    path.write_text(rules["data"]["rules.toml"], encoding="utf-8")
    assert load_rules(path).plans
    directory, _, filename = env["RECALL_RULES"].rpartition("/")
    assert filename == "rules.toml"
    worker = k8s_object("Deployment", "recall-worker")
    spec = pod_spec(worker)
    assert spec is not None
    (container,) = spec["containers"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[directory]["readOnly"] is True
    assert "subPath" not in mounts[directory], "a subPath mount never sees ConfigMap updates"


def test_kubernetes_migrate_job() -> None:
    job = k8s_object("Job", "recall-migrate")
    spec = pod_spec(job)
    assert spec is not None
    (command,) = [c for c in kubernetes_commands() if c.where.startswith("migrate-job.yaml")]
    assert command.argv == ("recall", "db", "upgrade")
    assert spec["restartPolicy"] in ("OnFailure", "Never")


def test_kubernetes_worker_deployment() -> None:
    worker = k8s_object("Deployment", "recall-worker")
    spec = pod_spec(worker)
    assert spec is not None
    (container,) = spec["containers"]
    argv = tuple(_argv(container.get("command")) + _argv(container.get("args")))
    assert argv[:3] == ("recall", "worker", "--no-beat")
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["metrics"] == METRICS_PORT
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(METRICS_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"
    env = k8s_object("ConfigMap", "recall-env")["data"]
    assert env["RECALL_METRICS_PORT"] == str(METRICS_PORT)


def test_kubernetes_dispatcher_is_unique() -> None:
    beats = [c for c in kubernetes_commands() if runs_beat(c.argv)]
    assert len(beats) == 1, [c.where for c in beats]
    assert beats[0].where.startswith("dispatcher-deployment.yaml")
    assert beats[0].argv[:4] == ("celery", "-A", CELERY_APP, "beat")
    dispatcher = k8s_object("Deployment", "recall-dispatcher")
    assert dispatcher["spec"]["replicas"] == 1
    assert dispatcher["spec"]["strategy"]["type"] == "Recreate"
    scaled = [o for _, o in k8s_objects() if o["kind"] == "ScaledObject"]
    assert all(o["spec"]["scaleTargetRef"]["name"] != "recall-dispatcher" for o in scaled)


def test_kubernetes_flower_auth_comes_from_the_secret() -> None:
    flower = k8s_object("Deployment", "recall-flower")
    spec = pod_spec(flower)
    assert spec is not None
    (container,) = spec["containers"]
    argv = tuple(_argv(container.get("command")) + _argv(container.get("args")))
    assert argv[:4] == ("celery", "-A", CELERY_APP, "flower")
    env = {variable["name"]: variable for variable in container["env"]}
    ref = env["FLOWER_BASIC_AUTH"]["valueFrom"]["secretKeyRef"]
    secret = k8s_object("Secret", ref["name"])
    assert ref["key"] in secret["stringData"]
    assert not any("--basic-auth" in arg for arg in argv), "auth belongs in the Secret"
    service = k8s_object("Service", "recall-flower")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert (
        service["spec"]["selector"].items()
        <= flower["spec"]["template"]["metadata"]["labels"].items()
    )


def test_kubernetes_api_is_probed_on_healthz_and_reads_its_tokens_from_the_secret() -> None:
    api = k8s_object("Deployment", "recall-api")
    spec = pod_spec(api)
    assert spec is not None
    (container,) = spec["containers"]
    argv = tuple(_argv(container.get("command")) + _argv(container.get("args")))
    assert argv[:2] == ("recall", "serve")
    assert argv[argv.index("--port") + 1] == str(API_PORT)
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["http"] == API_PORT
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe
    env = {variable["name"]: variable for variable in container["env"]}
    tokens = Path(env["RECALL_API_TOKENS"]["value"])
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    mount = mounts[str(tokens.parent)]
    assert mount["readOnly"] is True
    volume = {v["name"]: v for v in spec["volumes"]}[mount["name"]]
    secret = k8s_object("Secret", volume["secret"]["secretName"])
    (item,) = volume["secret"]["items"]
    assert item["path"] == tokens.name
    assert item["key"] in secret["stringData"]
    # The console's session secret, one for every replica, from the Secret.
    key = env["RECALL_SECRET_KEY"]["valueFrom"]["secretKeyRef"]
    assert key["key"] in k8s_object("Secret", key["name"])["stringData"]
    service = k8s_object("Service", "recall-api")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert (
        service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()
    )
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "http"


def test_keda_scales_the_workers_on_the_call_results_list() -> None:
    (scaled,) = [o for _, o in k8s_objects() if o["kind"] == "ScaledObject"]
    target = scaled["spec"]["scaleTargetRef"]
    assert target["name"] == _name(k8s_object("Deployment", "recall-worker"))
    assert target.get("kind", "Deployment") == "Deployment"
    assert scaled["spec"]["minReplicaCount"] >= 1, "the workers also fire recalls"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == CALL_RESULTS_QUEUE == "call_results"
    assert all(isinstance(value, str) for value in trigger["metadata"].values())
    auth = k8s_object("TriggerAuthentication", trigger["authenticationRef"]["name"])
    (password,) = [r for r in auth["spec"]["secretTargetRef"] if r["parameter"] == "password"]
    secret = k8s_object("Secret", password["name"])
    assert password["key"] in secret["stringData"]


# --- systemd ----------------------------------------------------------------------------------


def test_systemd_units_parse() -> None:
    units = sorted(SYSTEMD.glob("*.service"))
    assert {path.name for path in units} == {
        "recall-worker@.service",
        "recall-dispatcher.service",
        "recall-flower.service",
        "recall-migrate.service",
        "recall-api.service",
    }
    for path in units:
        parsed = unit(path)
        assert parsed.has_section("Unit"), path
        assert parsed.has_section("Service"), path
        assert parsed["Service"].get("ExecStart"), path
        assert parsed["Service"].get("User") == "recall", path


def test_systemd_migrations_come_first() -> None:
    migrate = unit(SYSTEMD / "recall-migrate.service")["Service"]
    assert migrate["Type"] == "oneshot"
    assert shlex.split(migrate["ExecStart"])[1:] == ["db", "upgrade"]
    for name in ("recall-worker@.service", "recall-dispatcher.service", "recall-api.service"):
        section = unit(SYSTEMD / name)["Unit"]
        assert "recall-migrate.service" in section["Requires"].split(), name
        assert "recall-migrate.service" in section["After"].split(), name


def test_systemd_runs_exactly_one_dispatcher() -> None:
    beats = [c.where for c in systemd_commands() if runs_beat(c.argv)]
    assert beats == ["recall-dispatcher.service ExecStart"]
    worker = [c for c in systemd_commands() if c.where == "recall-worker@.service ExecStart"]
    assert "--no-beat" in worker[0].argv


def test_systemd_worker_instances_get_their_own_metrics_port() -> None:
    service = unit(SYSTEMD / "recall-worker@.service")["Service"]
    assert service["Environment"] == "RECALL_METRICS_PORT=%i"
    assert "RECALL_METRICS_PORT" not in env_file(SYSTEMD / "recall.env.example")


def test_systemd_flower_gets_basic_auth_from_the_env_file() -> None:
    flower = unit(SYSTEMD / "recall-flower.service")["Service"]
    assert flower["EnvironmentFile"].lstrip("-") == "/etc/recall/recall.env"
    assert "FLOWER_BASIC_AUTH" in flower["ExecStartPre"]
    env = env_file(SYSTEMD / "recall.env.example")
    assert re.fullmatch(r"[^:,]+:[^,]+", env["FLOWER_BASIC_AUTH"])
    assert env["RECALL_BROKER_URL"].startswith("redis://")
    assert env["RECALL_DATABASE_URL"].startswith("postgresql+psycopg://")


def test_systemd_api_needs_its_tokens_and_listens_on_loopback() -> None:
    api = unit(SYSTEMD / "recall-api.service")["Service"]
    assert api["EnvironmentFile"].lstrip("-") == "/etc/recall/recall.env"
    argv = shlex.split(api["ExecStart"])
    assert argv[1:2] == ["serve"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--forwarded-allow-ips") + 1] == "127.0.0.1"
    assert env_file(SYSTEMD / "recall.env.example")["RECALL_API_TOKENS"].endswith(".toml")
    assert env_file(SYSTEMD / "recall.env.example")["RECALL_SECRET_KEY"]


def test_compose_api_needs_its_tokens_and_is_checked_on_healthz() -> None:
    api = compose_services()["api"]
    argv = _compose_service_argv(api, _argv(api["command"]))
    assert argv[:2] == ["recall", "serve"]
    tokens = api["environment"]["RECALL_API_TOKENS"]
    mounts = {volume["target"]: volume for volume in api["volumes"] if isinstance(volume, dict)}
    assert mounts[tokens]["read_only"] is True
    assert api["environment"]["RECALL_SECRET_KEY"].startswith("${RECALL_SECRET_KEY:?")
    assert any(str(port) == f"127.0.0.1:{API_PORT}:{API_PORT}" for port in api["ports"])
    assert any("/healthz" in part for part in api["healthcheck"]["test"])
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


# --- Prometheus -------------------------------------------------------------------------------


def test_prometheus_scrapes_the_workers_metrics_port() -> None:
    (scrape,) = load_yaml(PROMETHEUS / "scrape.yml")
    assert str(METRICS_PORT) in (PROMETHEUS / "scrape.yml").read_text(encoding="utf-8")
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    static = [job for job in jobs.values() if "static_configs" in job]
    targets = [t for job in static for group in job["static_configs"] for t in group["targets"]]
    assert targets
    assert all(re.fullmatch(r"[\w.-]+:[0-9]{2,5}", target) for target in targets), targets
    assert any(target.endswith(f":{METRICS_PORT}") for target in targets), targets
    (discovered,) = [job for job in jobs.values() if "kubernetes_sd_configs" in job]
    keep = [r for r in discovered["relabel_configs"] if r.get("action") == "keep"]
    annotations = k8s_object("Deployment", "recall-worker")["spec"]["template"]["metadata"][
        "annotations"
    ]
    for annotation in annotations:  # the convention the relabelling reads
        label = "__meta_kubernetes_pod_annotation_" + re.sub(r"[^a-zA-Z0-9_]", "_", annotation)
        sources = {s for r in discovered["relabel_configs"] for s in r.get("source_labels", [])}
        assert label in sources, annotation
    assert keep[0]["source_labels"] == ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]


def test_prometheus_alerts_use_the_recall_metrics() -> None:
    (alerts,) = load_yaml(PROMETHEUS / "alerts.yml")
    rules = [rule for group in alerts["groups"] for rule in group["rules"]]
    assert len({rule["alert"] for rule in rules}) == len(rules)
    for rule in rules:
        assert rule["expr"], rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
    exprs = " ".join(rule["expr"] for rule in rules)
    assert "recall_recalls_overdue" in exprs
    assert re.search(r"(rate|increase)\(recall_dead_letters_total\[", exprs)
    assert re.search(r"histogram_quantile\(.*recall_fire_lateness_seconds_bucket", exprs)
    (scrape,) = load_yaml(PROMETHEUS / "scrape.yml")
    jobs = [job["job_name"] for job in scrape["scrape_configs"]]
    for selector in re.findall(r'job=~"([^"]+)"', exprs):
        assert all(re.fullmatch(selector, job) for job in jobs), selector


# --- README -----------------------------------------------------------------------------------


def test_readme_covers_every_part() -> None:
    text = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for part in ("Dockerfile", "docker-compose.yml", "systemd/", "kubernetes/", "prometheus/"):
        assert part in text, part
    for topic in (".dockerignore", "exactly one", "FLOWER_BASIC_AUTH", "/metrics", "9547"):
        assert topic in text, topic
    for path in re.findall(r"`((?:systemd|kubernetes|prometheus)/[\w.@-]+)`", text):
        assert (DEPLOY / path).exists(), path
