"""The one reader of JSON that comes from outside: the three config files,
every wire message, the worker's status file as the client reads it.

``loads(data, where, error, max_bytes)`` returns the parsed value or raises
``error`` (ConfigError or ProtocolError) naming ``where`` and what is
wrong. Beyond JSON's grammar it refuses what the daemons cannot carry
safely, so no field check further on can meet it:

- more than ``max_bytes`` bytes, or text that is not UTF-8;
- ``NaN``/``Infinity`` and numbers that overflow to them (``1e400``);
- integers beyond 64 bits (signed; past 4300 digits Python refuses to
  parse one at all, so ``10**5000`` cannot stall the parser);
- strings with lone surrogates (``"\\ud800"``: valid JSON, but no file, no
  socket and no ``execve`` can take it);
- nesting deeper than ``MAX_DEPTH`` (no real file nests past a handful).

NUL bytes are the fields' business (config.py refuses them wherever a path,
a user, a name or an argument goes).
"""

import math
import re

import simplejson as json

MAX_DEPTH = 32
INT_BOUND = 2 ** 63         # integers in [-2**63, 2**63)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class _Refused(ValueError):
    pass


def _parse_constant(name):
    raise _Refused("%s is not a number JSON allows" % name)


def loads(data, where, error, max_bytes):
    """Parse ``data`` (bytes or text); raise ``error("<where>: <why>")``."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        if len(data) > max_bytes:
            raise error("%s: larger than %d bytes" % (where, max_bytes))
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as err:
            raise error("%s: not UTF-8: %s" % (where, err))
    elif len(data) > max_bytes:
        raise error("%s: larger than %d bytes" % (where, max_bytes))
    try:
        # Numbers are checked in the walk below, not by a Python call per
        # number while parsing (a status file of 5000 processes has some
        # 50000); Python refuses to parse an integer of over 4300 digits.
        value = json.loads(data, parse_constant=_parse_constant)
    except _Refused as err:
        raise error("%s: %s" % (where, err))
    except json.JSONDecodeError as err:
        raise error("%s: not JSON: line %d column %d: %s"
                    % (where, err.lineno, err.colno, err.msg))
    except (RecursionError, ValueError) as err:
        raise error("%s: not JSON: %s" % (where, err))
    # A lone surrogate can only come from a \\uD800-\\uDFFF escape (UTF-8
    # has none): without one in the text, only the depth is checked.
    _check_tree(value, where, error,
                _SURROGATE_ESCAPE.search(data) is not None)
    return value


def _check_tree(value, where, error, strings=True):
    """Depth, numbers, and the strings when ``strings``, without recursion
    (a deep tree would overflow it)."""
    stack = [([value], 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise error("%s: nested deeper than %d levels"
                        % (where, MAX_DEPTH))
        if type(item) is dict:
            if strings:
                for key in item:
                    _check_string(key, where, error)
            children = item.values()
        else:
            children = item
        for child in children:
            kind = type(child)
            if kind is list or kind is dict:
                stack.append((child, depth + 1))
            elif kind is int:
                if not -INT_BOUND <= child < INT_BOUND:
                    raise error("%s: an integer of %d bits, past the "
                                "signed 64-bit range" % (where,
                                                         child.bit_length()))
            elif kind is float:
                if not math.isfinite(child):
                    raise error("%s: a number is out of range (%r)"
                                % (where, child))
            elif strings and kind is str:
                _check_string(child, where, error)


def _check_string(text, where, error):
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise error("%s: a string holds a lone surrogate (%s...)"
                    % (where, ascii(text[:40])))
