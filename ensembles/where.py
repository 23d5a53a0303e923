"""`--where`: a tiny filter language over a member's config fields, seed and fold.

Grammar (clauses joined by `and`; no `or`, no parentheses around clauses)::

    clause := FIELD OP VALUE | FIELD [not] in (VALUE, VALUE, ...)
    OP     := == | != | < | <= | > | >=
    VALUE  := number | bare word | 'quoted' | "quoted" | none | true | false

Examples: `warmup in (30,40,50)`, `preset == robust_v3`, `seed != 2 and fold < 3`.

It is parsed by hand and never evaluated as Python: the text comes from a command
line and may end up in shared scripts. Numbers compare as numbers (30 == 30.0);
anything else compares by equality only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mer_ray.errors import InputError

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<num>[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?(?![A-Za-z_]))
      | (?P<str>'[^']*'|"[^"]*")
      | (?P<op>==|!=|<=|>=|<|>)
      | (?P<punct>[(),])
      | (?P<word>[A-Za-z_][A-Za-z0-9_.\-]*)
    )""",
    re.VERBOSE,
)
_ORDER_OPS = ("<", "<=", ">", ">=")
_NO_VALUE = object()  # a field the member does not have


@dataclass(frozen=True)
class Clause:
    field: str
    op: str  # one of ==, !=, <, <=, >, >=, in, not in
    value: object  # a literal, or a tuple of literals for in / not in


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise InputError(f"{text!r}: cannot read {text[pos:].strip()!r}", param="where")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _literal(kind: str, tok: str, text: str):
    if kind == "num":
        value = float(tok)
        return int(value) if value.is_integer() and re.fullmatch(r"[-+]?\d+", tok) else value
    if kind == "str":
        return tok[1:-1]
    if kind == "word":
        low = tok.lower()
        return {"none": None, "null": None, "true": True, "false": False}.get(low, tok)
    raise InputError(f"{text!r}: expected a value, got {tok!r}", param="where")


def parse(text: str) -> list[Clause]:
    """Parse an expression into clauses (all must hold). Bad syntax -> InputError."""
    toks = _tokens(text)
    if not toks:
        raise InputError(": empty expression; e.g. --where 'warmup in (30,40)'", param="where")
    clauses, i = [], 0

    def take():
        nonlocal i
        if i >= len(toks):
            raise InputError(f"{text!r}: expression ends too early", param="where")
        i += 1
        return toks[i - 1]

    while True:
        kind, field = take()
        if kind != "word":
            raise InputError(f"{text!r}: expected a field name, got {field!r}", param="where")
        kind, op = take()
        if kind == "word" and op == "not":
            kind, nxt = take()
            if nxt != "in":
                raise InputError(f"{text!r}: expected 'in' after 'not', got {nxt!r}", param="where")
            op = "not in"
        elif kind == "word" and op == "in":
            pass
        elif kind != "op":
            raise InputError(f"{text!r}: expected an operator after {field!r}, got {op!r}", param="where")
        if op in ("in", "not in"):
            if take()[1] != "(":
                raise InputError(f"{text!r}: expected '(' after {op!r}", param="where")
            values = []
            while True:
                values.append(_literal(*take(), text))
                sep = take()[1]
                if sep == ")":
                    break
                if sep != ",":
                    raise InputError(f"{text!r}: expected ',' or ')', got {sep!r}", param="where")
            value = tuple(values)
        else:
            value = _literal(*take(), text)
        clauses.append(Clause(field, op, value))
        if i == len(toks):
            return clauses
        kind, joiner = take()
        if joiner != "and":
            raise InputError(f"{text!r}: expected 'and' between clauses, got {joiner!r}", param="where")


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _equal(a, b) -> bool:
    if _is_number(a) and _is_number(b):
        return float(a) == float(b)
    if isinstance(a, str) != isinstance(b, str) and (a is not None and b is not None):
        # `preset == 3` against a string field, or a bare word against a number field:
        # compare the spellings, so e.g. `grad_clip == 1.0` and `preset == v3` both work.
        return str(a) == str(b)
    return a == b


def _holds(clause: Clause, actual) -> bool:
    op, value = clause.op, clause.value
    if actual is _NO_VALUE:
        return op in ("!=", "not in")
    if op == "==":
        return _equal(actual, value)
    if op == "!=":
        return not _equal(actual, value)
    if op == "in":
        return any(_equal(actual, v) for v in value)
    if op == "not in":
        return not any(_equal(actual, v) for v in value)
    if not (_is_number(actual) and _is_number(value)):
        return False  # None (e.g. early stop off) is never < or > a number
    return {"<": actual < value, "<=": actual <= value,
            ">": actual > value, ">=": actual >= value}[op]


def member_fields(member) -> dict:
    """The fields a clause can name: every config field, plus seed and fold."""
    return {**member.config, "seed": member.seed, "fold": member.fold}


def check_fields(clauses: list[Clause], known: set[str], text: str) -> None:
    for c in clauses:
        if c.field not in known:
            raise InputError(f"{text!r}: unknown field {c.field!r}; fields: "
                             f"{', '.join(sorted(known))}", param="where")
        if c.op in _ORDER_OPS and not _is_number(c.value):
            raise InputError(f"{text!r}: {c.field} {c.op} needs a number, got {c.value!r}", param="where")


def matches(clauses: list[Clause], fields: dict) -> bool:
    return all(_holds(c, fields.get(c.field, _NO_VALUE)) for c in clauses)


def filter_members(members: list, text: str | None) -> list:
    """The members whose fields satisfy `text` (None or blank keeps all)."""
    if text is None or not text.strip():
        return list(members)
    clauses = parse(text)
    known = {"seed", "fold"}
    for m in members:
        known.update(m.config)
    check_fields(clauses, known, text)
    return [m for m in members if matches(clauses, member_fields(m))]
