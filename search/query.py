"""The --where filter language, compiled to a pyarrow.compute expression by a small parser, never eval.

Grammar (keywords are case-insensitive, column names are not)::

    expr       := or_expr
    or_expr    := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | "(" expr ")" | comparison
    comparison := COLUMN OP literal
                | COLUMN ["not"] "in" "(" literal ("," literal)* ")"
    OP         := "==" | "!=" | "<" | "<=" | ">" | ">="
    literal    := number | 'string' | "string" | true | false | null

So `not` binds tighter than `and`, which binds tighter than `or`. `col == null` keeps rows where the
column is null and `col != null` the others; any other comparison with a null value is never true,
as in SQL. Timestamp columns compare with ISO strings ('2025-01-31', '2025-01-31T12:00:00'; UTC
unless an offset is given). Examples::

    status == 'completed' and lr < 1e-2
    model in ('mlp', 'cnn') and not (momentum > 0.9 or hidden_units <= 64)
    asha_rung != null
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc

from search.errors import QueryError

COMPARISONS = ("==", "!=", "<=", ">=", "<", ">")
KEYWORDS = ("and", "or", "not", "in", "true", "false", "null")
HELP = (
    "filter rows: COL OP VALUE with OP in == != < <= > >=, COL in (V, ...), COL not in (V, ...), "
    "combined with and, or, not and parentheses (not > and > or); values are numbers, 'strings', "
    "true, false or null (COL == null, COL != null). Example: \"status == 'completed' and lr < 0.01\""
)

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<number>[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<op>==|!=|<=|>=|<|>)
  | (?P<punct>[(),])
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Token:
    kind: str  # number, string, op, punct, name, keyword, end
    text: str
    pos: int  # 1-based character position, as shown in error messages


def unknown_column(name: str, columns: list[str], flag: str) -> QueryError:
    """One message for every flag that names a column, with a close match when there is one."""
    close = difflib.get_close_matches(name, columns, n=1, cutoff=0.75)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return QueryError(f"unknown column '{name}' in {flag}{hint}; columns: {', '.join(columns)}")


def _tokenize(text: str) -> list[_Token]:
    tokens, i = [], 0
    while i < len(text):
        m = _TOKEN.match(text, i)
        if m is None:
            if text[i] in "'\"":
                raise QueryError(f"bad --where at position {i + 1}: unterminated string {text[i:]}")
            hint = " (compare with ==)" if text[i] == "=" else ""
            raise QueryError(f"bad --where at position {i + 1}: unexpected character {text[i]!r}{hint}")
        kind = m.lastgroup
        if kind != "space":
            word = m.group()
            if kind == "name" and word.lower() in KEYWORDS:
                kind, word = "keyword", word.lower()
            tokens.append(_Token(kind, word, i + 1))
        i = m.end()
    tokens.append(_Token("end", "", len(text) + 1))
    return tokens


class _Parser:
    """Recursive descent over the tokens; each grammar rule is one method."""

    def __init__(self, text: str, schema: pa.Schema):
        self.tokens = _tokenize(text)
        self.i = 0
        self.schema = schema

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def accept(self, kind: str, text: str) -> bool:
        tok = self.peek()
        if tok.kind == kind and tok.text == text:
            self.i += 1
            return True
        return False

    def fail(self, expected: str) -> QueryError:
        tok = self.peek()
        got = "end of input" if tok.kind == "end" else repr(tok.text)
        return QueryError(f"bad --where at position {tok.pos}: expected {expected}, got {got}")

    def parse(self) -> pc.Expression:
        expr = self.or_expr()
        if self.peek().kind != "end":
            raise self.fail("'and', 'or' or end of input")
        return expr

    def or_expr(self) -> pc.Expression:
        expr = self.and_expr()
        while self.accept("keyword", "or"):
            expr = expr | self.and_expr()
        return expr

    def and_expr(self) -> pc.Expression:
        expr = self.not_expr()
        while self.accept("keyword", "and"):
            expr = expr & self.not_expr()
        return expr

    def not_expr(self) -> pc.Expression:
        if self.accept("keyword", "not"):
            return ~self.not_expr()
        if self.accept("punct", "("):
            expr = self.or_expr()
            if not self.accept("punct", ")"):
                raise self.fail("')'")
            return expr
        return self.comparison()

    def comparison(self) -> pc.Expression:
        tok = self.peek()
        if tok.kind != "name":
            raise self.fail("a column name, 'not' or '('")
        self.take()
        if tok.text not in self.schema.names:
            raise unknown_column(tok.text, self.schema.names, "--where")
        column = self.schema.field(tok.text)
        if self.peek().kind == "op":
            op = self.take().text
            return _compare(column, op, self.literal(column))
        negate = self.accept("keyword", "not")
        if not self.accept("keyword", "in"):
            raise self.fail("'in'" if negate else "an operator (==, !=, <, <=, >, >=, in, not in)")
        return _is_in(column, self.literal_list(column), negate)

    def literal_list(self, column: pa.Field) -> list:
        if not self.accept("punct", "("):
            raise self.fail("'(' to start the list of values")
        values = [self.literal(column)]
        while self.accept("punct", ","):
            values.append(self.literal(column))
        if not self.accept("punct", ")"):
            raise self.fail("',' or ')'")
        return values

    def literal(self, column: pa.Field):
        tok = self.peek()
        if tok.kind == "number":
            value = float(tok.text) if any(c in tok.text for c in ".eE") else int(tok.text)
        elif tok.kind == "string":
            value = re.sub(r"\\(.)", r"\1", tok.text[1:-1])
        elif tok.kind == "keyword" and tok.text in ("true", "false", "null"):
            value = {"true": True, "false": False, "null": None}[tok.text]
        else:
            raise self.fail("a value (number, quoted string, true, false or null)")
        self.take()
        return _check_type(column, value, tok.text)


def type_name(t: pa.DataType) -> str:
    """Numpy's names for floats (float64, not pyarrow's double), as users know them from pandas."""
    return {"double": "float64", "float": "float32", "halffloat": "float16"}.get(str(t), str(t))


def _check_type(column: pa.Field, value, text: str):
    """Refuse literals the column can never equal; turn ISO strings into timestamps."""
    t = column.type
    if value is None:
        return None
    kind = "boolean" if isinstance(value, bool) else "string" if isinstance(value, str) else "number"
    if pa.types.is_timestamp(t) and kind == "string":
        try:
            stamp = datetime.fromisoformat(value)
        except ValueError:
            raise QueryError(
                f"column '{column.name}' is {type_name(t)}, got string {text} (use an ISO date such as '2025-01-31')"
            ) from None
        return pa.scalar(stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc), type=t)
    fits = {
        "number": pa.types.is_integer(t) or pa.types.is_floating(t),
        "string": pa.types.is_string(t) or pa.types.is_large_string(t),
        "boolean": pa.types.is_boolean(t),
    }[kind]
    if not fits:
        raise QueryError(f"column '{column.name}' is {type_name(t)}, got {kind} {text}")
    return value


def _compare(column: pa.Field, op: str, value) -> pc.Expression:
    field = pc.field(column.name)
    if value is None:
        if op not in ("==", "!="):
            raise QueryError(f"null can only be compared with == or !=, got '{column.name} {op} null'")
        return field.is_null() if op == "==" else field.is_valid()
    return {
        "==": field.__eq__,
        "!=": field.__ne__,
        "<": field.__lt__,
        "<=": field.__le__,
        ">": field.__gt__,
        ">=": field.__ge__,
    }[op](value)


def _is_in(column: pa.Field, values: list, negate: bool) -> pc.Expression:
    """Null rows match only a listed null; otherwise `in` is null for them, so `not in` drops them, as in SQL."""
    field = pc.field(column.name)
    present = [v for v in values if v is not None]
    match = field.isin(present) if present else pc.scalar(False)
    on_null = pa.scalar(True if None in values else None, pa.bool_())
    match = pc.if_else(field.is_null(), on_null, match)
    return ~match if negate else match


def compile_where(text: str, schema: pa.Schema) -> pc.Expression:
    """Compile a --where text into an expression over `schema`, checking columns and literal types."""
    if not text.strip():
        raise QueryError("--where is empty; give a filter such as \"status == 'completed'\"")
    return _Parser(text, schema).parse()
