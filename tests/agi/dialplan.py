"""A small interpreter for the dialplan callwarden ships (config/asterisk/extensions_callwarden.conf).

It understands exactly what the snippet uses, the way Asterisk does: ``;`` comments,
``exten =>`` / ``same => n(label)`` lines, ``${VAR}`` and ``${IF($[...]?a:b)}`` substitution,
``$[...]`` expressions with ``=``, ``!=``, ``&``, ``|`` and parentheses, and the applications
NoOp, Log, Verbose, Set, AGI, GotoIf, Hangup and Return. Anything else raises
:class:`Unsupported`, so a new construct in the snippet cannot slip past the tests unevaluated.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.sim.asterisk import separate_app_args


class Unsupported(Exception):
    """The snippet uses something this interpreter (and so the tests) does not cover."""


@dataclass(frozen=True)
class Step:
    priority: int
    label: str | None
    app: str
    data: str


@dataclass
class Outcome:
    """How a subroutine run ended: ``return`` (the caller goes on to Dial) or ``hangup``."""

    how: str  # return | hangup | fell_off_end
    cause: str | None = None
    variables: dict[str, str] = field(default_factory=dict)
    agi_calls: list[tuple[str, list[str]]] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)

    @property
    def proceeds(self) -> bool:
        return self.how == "return"


AgiRunner = Callable[[str, list[str], dict[str, str]], Mapping[str, str]]
AsyncAgiRunner = Callable[[str, list[str], dict[str, str]], Awaitable[Mapping[str, str]]]

_EXTEN = re.compile(r"exten\s*=>\s*([^,]+),\s*(\d+|n)(?:\((\w+)\))?,\s*(\w+)\((.*)\)\s*$")
_SAME = re.compile(r"same\s*=>\s*n(?:\((\w+)\))?,\s*(\w+)\((.*)\)\s*$")


def _strip_comment(line: str) -> str:
    out, escaped = [], False
    for ch in line:
        if ch == ";" and not escaped:
            break
        escaped = ch == "\\" and not escaped
        out.append(ch)
    return "".join(out).rstrip()


def parse(path: Path) -> dict[str, list[Step]]:
    """Context name -> the ``s`` extension's steps, in priority order."""
    contexts: dict[str, list[Step]] = {}
    current: list[Step] | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = _strip_comment(raw).strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            current = contexts.setdefault(line[1:-1], [])
            continue
        if current is None:
            raise Unsupported(f"line outside a context: {line!r}")
        m = _EXTEN.match(line)
        if m:
            exten, prio, label, app, data = m.groups()
            if exten.strip() != "s" or prio != "1":
                raise Unsupported(f"only 'exten => s,1' starts a subroutine: {line!r}")
            current.append(Step(1, label, app, data))
            continue
        m = _SAME.match(line)
        if m:
            if not current:
                raise Unsupported(f"'same =>' before 'exten =>': {line!r}")
            label, app, data = m.groups()
            current.append(Step(current[-1].priority + 1, label, app, data))
            continue
        raise Unsupported(f"unparsed dialplan line: {line!r}")
    return contexts


# -- substitution and expressions --------------------------------------------------------------


def _matching(text: str, start: int, open_: str, close: str) -> int:
    depth = 0
    for i in range(start, len(text)):
        if text[i] == open_:
            depth += 1
        elif text[i] == close:
            depth -= 1
            if depth == 0:
                return i
    raise Unsupported(f"unbalanced {open_}{close} in {text!r}")


def substitute(text: str, variables: Mapping[str, str]) -> str:
    out, i = [], 0
    while i < len(text):
        if text.startswith("${", i):
            end = _matching(text, i + 1, "{", "}")
            out.append(_value(substitute(text[i + 2:end], variables), variables))
            i = end + 1
        elif text.startswith("$[", i):
            end = _matching(text, i + 1, "[", "]")
            out.append(evaluate(substitute(text[i + 2:end], variables)))
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _value(inner: str, variables: Mapping[str, str]) -> str:
    m = re.fullmatch(r"IF\((.*)\)", inner, re.S)
    if m:
        cond, _, branches = m.group(1).partition("?")
        yes, _, no = branches.partition(":")
        return yes if _true(cond) else no
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", inner):
        raise Unsupported(f"unsupported substitution ${{{inner}}}")
    return variables.get(inner, "")


def _true(value: str) -> bool:
    value = value.strip()
    return value not in ("", "0")


_TOKEN = re.compile(r'\s*(?:("(?:[^"\\]|\\.)*")|(!=|=|&|\||\(|\))|([^\s"=!&|()]+))')


def evaluate(expr: str) -> str:
    """Asterisk's ``$[...]``: ``|`` below ``&`` below comparisons; quotes are stripped."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            if expr[pos:].strip() == "":
                break
            raise Unsupported(f"unsupported expression {expr!r}")
        quoted, op, word = m.groups()
        if quoted is not None:
            tokens.append(("v", quoted[1:-1]))
        elif op is not None:
            tokens.append(("op", op))
        elif word is not None:
            tokens.append(("v", word))
        pos = m.end()
    value, rest = _or(tokens)
    if rest:
        raise Unsupported(f"trailing tokens in {expr!r}")
    return value


def _or(tokens: list[tuple[str, str]]) -> tuple[str, list[tuple[str, str]]]:
    left, tokens = _and(tokens)
    while tokens and tokens[0] == ("op", "|"):
        right, tokens = _and(tokens[1:])
        left = left if _true(left) else right
    return left, tokens


def _and(tokens: list[tuple[str, str]]) -> tuple[str, list[tuple[str, str]]]:
    left, tokens = _cmp(tokens)
    while tokens and tokens[0] == ("op", "&"):
        right, tokens = _cmp(tokens[1:])
        left = left if _true(left) and _true(right) else "0"
    return left, tokens


def _cmp(tokens: list[tuple[str, str]]) -> tuple[str, list[tuple[str, str]]]:
    left, tokens = _atom(tokens)
    while tokens and tokens[0] in (("op", "="), ("op", "!=")):
        op = tokens[0][1]
        right, tokens = _atom(tokens[1:])
        left = "1" if (left == right) == (op == "=") else "0"
    return left, tokens


def _atom(tokens: list[tuple[str, str]]) -> tuple[str, list[tuple[str, str]]]:
    if not tokens:
        return "", tokens
    if tokens[0] == ("op", "("):
        value, rest = _or(tokens[1:])
        if not rest or rest[0] != ("op", ")"):
            raise Unsupported("unbalanced parentheses")
        return value, rest[1:]
    kind, value = tokens[0]
    if kind != "v":
        raise Unsupported(f"unexpected operator {value!r}")
    return value, tokens[1:]


# -- running a subroutine ----------------------------------------------------------------------


#: res_agi.c's MAX_ARGS: AGI() splits its argument into at most this many.
AGI_MAX_ARGS = 128


def _interpret(steps: list[Step], args: list[str], channel: Mapping[str, str],
               max_steps: int) -> Generator[tuple[str, list[str], dict[str, str]],
                                            Mapping[str, str], Outcome]:
    """The interpreter proper; it yields each AGI request and is sent the AGI's variables."""
    variables = dict(channel)
    for n, value in enumerate(args, 1):
        variables[f"ARG{n}"] = value
    outcome = Outcome("fell_off_end", variables=variables)
    labels = {s.label: i for i, s in enumerate(steps) if s.label}
    i = 0
    for _ in range(max_steps):
        if i >= len(steps):
            return outcome  # Asterisk hangs the channel up when no priority follows
        step = steps[i]
        app = step.app.lower()
        outcome.trace.append(f"{step.priority}:{step.app}")
        i += 1
        if app in ("noop", "log", "verbose"):
            substitute(step.data, variables)  # must still parse
        elif app == "set":
            name, sep, value = step.data.partition("=")
            if not sep:
                raise Unsupported(f"Set without '=': {step.data!r}")
            variables[name.strip()] = substitute(value, variables)
        elif app == "agi":
            # as Asterisk does: substitute the whole argument, then split it the way every
            # application does (quotes and backslashes removed; a comma in a value splits it)
            url, *agi_args = separate_app_args(substitute(step.data, variables), ",", AGI_MAX_ARGS)
            outcome.agi_calls.append((url, agi_args))
            variables.update((yield url, agi_args, dict(variables)))
        elif app == "gotoif":
            cond, _, targets = substitute(step.data, variables).partition("?")
            yes, _, no = targets.partition(":")
            target = yes if _true(cond) else no
            if target:
                if target not in labels:
                    raise Unsupported(f"GotoIf to an unknown label {target!r}")
                i = labels[target]
        elif app == "hangup":
            outcome.how, outcome.cause = "hangup", substitute(step.data, variables)
            return outcome
        elif app == "return":
            outcome.how = "return"
            return outcome
        else:
            raise Unsupported(f"application {step.app} is not interpreted")
    raise Unsupported("subroutine did not end (loop?)")


def run_subroutine(steps: list[Step], *, args: list[str], channel: Mapping[str, str],
                   agi: AgiRunner, max_steps: int = 200) -> Outcome:
    """Run a ``Gosub(context,s,1(args))`` body on a channel with ``channel`` variables."""
    gen = _interpret(steps, args, channel, max_steps)
    try:
        request = next(gen)
        while True:
            request = gen.send(agi(*request))
    except StopIteration as stop:
        return stop.value


async def arun_subroutine(steps: list[Step], *, args: list[str], channel: Mapping[str, str],
                          agi: AsyncAgiRunner, max_steps: int = 200) -> Outcome:
    """:func:`run_subroutine` with an AGI step that is awaited (a simulated Asterisk)."""
    gen = _interpret(steps, args, channel, max_steps)
    try:
        request = next(gen)
        while True:
            request = gen.send(await agi(*request))
    except StopIteration as stop:
        return stop.value
