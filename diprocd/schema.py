"""What is generated from the field table: the JSON Schemas of the three
files, and the process-field tables of the README and of dpd-workerd(8).

The process fields come from ``spec.FIELDS`` (name, type, doc line,
default), each type's JSON Schema from its check in ``config`` (the
``schema`` a check carries), the files' keys from ``config.WORKER_KEYS``,
``MASTER_KEYS`` and ``CLIENT_KEYS``. So nothing here is written twice; what
a schema says beyond the checks (the ``daemon`` rule, the nodes object) is
checked against the validator by tests/test_schema.py.

    python -m diprocd.schema --write   rewrite the generated files (make docs)
    python -m diprocd.schema --check   exit 1 naming each file that differs

The schemas go to ``schema/`` in the tree and to /usr/share/diprocd/schema/
in the Debian package; a CONFIG may name its schema in a top-level
``"$schema"`` key, which the daemons accept and ignore.
"""

import argparse
import copy
import os
import re
import sys

import simplejson as json

from diprocd import config
from diprocd.spec import FIELDS, ProcessSpec

DRAFT = "https://json-schema.org/draft/2020-12/schema"
INSTALLED = "/usr/share/diprocd/schema"

# file kind -> (schema file name, the daemon, its key table)
FILES = {
    "worker": ("diprocd-worker.schema.json", "dpd-workerd",
               config.WORKER_KEYS),
    "master": ("diprocd-master.schema.json", "dpd-masterd",
               config.MASTER_KEYS),
    "client": ("diprocd-client.schema.json", "dpd-clientd",
               config.CLIENT_KEYS),
}

GENERATED_BY = ("generated from diprocd/spec.py and diprocd/config.py by "
                "`make docs` (python -m diprocd.schema --write): edit those")

# The folder a source tree keeps the generated files in.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = "README.md"
MAN_PAGE = os.path.join("man", "dpd-workerd.8")
README_BLOCK = ("<!-- BEGIN process fields: %s -->\n" % GENERATED_BY,
                "<!-- END process fields -->\n")
MAN_BLOCK = ('.\\" BEGIN process fields: %s\n' % GENERATED_BY,
             '.\\" END process fields\n')


# --- the schemas --------------------------------------------------------------

def _number(value):
    """10.0 -> 10: the same JSON number, written as a person would."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def field_default(field):
    """The default of a field as a file would write it, or None when it
    has none to write (required, or derived on the worker's machine)."""
    if field.required or field.default is None \
            or field.default_doc is not None:  # derived, said in words
        return None
    # A spec of defaults writes each as the state file keeps it.
    defaults = ProcessSpec(name="-", run="/-").to_json()
    return _number(defaults[field.name])


def field_schema(field):
    schema = {"description": _plain(field.doc)}
    accepted = copy.deepcopy(config.FIELD_TYPES[field.type].schema)
    if field.null_is_default:
        schema["title"] = accepted.pop("title") + " or null (the default)"
        schema["anyOf"] = [accepted, {"type": "null"}]
    else:
        schema.update(accepted)
    default = field_default(field)
    if default is not None:
        schema["default"] = default
    return schema


def process_schema():
    """One process definition. Unknown fields, which the validator only
    warns about, are refused here, so that an editor marks a misspelt one."""
    return {
        "title": "a process definition",
        "type": "object",
        "properties": {field.name: field_schema(field) for field in FIELDS},
        "required": [field.name for field in FIELDS if field.required],
        "additionalProperties": False,
        # config._validate_one: a daemon writes its own pid file.
        "if": {"properties": {"daemon": {"const": True}},
               "required": ["daemon"]},
        "then": {"properties": {"write_pid": {"const": False}},
                 "required": ["write_pid", "pid_file"]},
    }


# protocol.check_node_name: a non-empty string without NUL (its bound of
# 255 UTF-8 bytes is not one JSON Schema can count).
NODE_NAME = {"minLength": 1, "pattern": config.NOT_NUL}


def key_schema(key, rule):
    if key == "procs":
        return {"title": "the process definitions",
                "$ref": "#/$defs/procs"}
    schema = copy.deepcopy(rule.check.schema)
    if key == "nodes":
        schema.update(propertyNames=NODE_NAME,
                      additionalProperties={"$ref": "#/$defs/procs"})
    if rule.default is not None and not rule.required:
        schema["default"] = _number(rule.default)
    return schema


def file_schema(kind):
    """The JSON Schema of one daemon's CONFIG."""
    name, daemon, table = FILES[kind]
    schema = {
        "$schema": DRAFT,
        "$id": "file://%s/%s" % (INSTALLED, name),
        "$comment": GENERATED_BY,
        "title": "%s CONFIG" % daemon,
        "type": "object",
        "properties": {key: key_schema(key, rule)
                       for key, rule in table.items()},
        "required": [key for key, rule in table.items() if rule.required],
        "additionalProperties": False,
    }
    if "procs" in table or "nodes" in table:
        schema["$defs"] = {"procs": {"type": "array",
                                     "items": {"$ref": "#/$defs/process"}},
                           "process": process_schema()}
    return schema


def schema_text(kind):
    return json.dumps(file_schema(kind), indent=2, ensure_ascii=False) + "\n"


# --- the field tables -----------------------------------------------------------

def _plain(markdown):
    """The doc line without Markdown's backticks (JSON Schema descriptions
    are plain text)."""
    return markdown.replace("`", "")


def _type_words(field):
    words = config.FIELD_TYPES[field.type].schema["title"]
    return words + " or null" if field.null_is_default else words


def _default_words(field):
    """The default as the tables give it, in Markdown."""
    if field.required:
        return "required"
    if field.default_doc is not None:
        return field.default_doc
    return "`%s`" % json.dumps(field_default(field))


def markdown_table():
    # Blank lines around: a Markdown table must not touch the comments.
    lines = ["", "| field | type | meaning | default |", "|---|---|---|---|"]
    for field in FIELDS:
        lines.append("| `%s` | %s | %s | %s |" % (
            field.name, _type_words(field), field.doc.replace("|", "\\|"),
            _default_words(field)))
    return "\n".join(lines) + "\n\n"


def _roff(markdown):
    """A doc line for a man page: `code` in bold, roff's specials escaped."""
    text = markdown.replace("\\", "\\e").replace("-", "\\-")
    text = re.sub(r"`([^`]*)`", r"\\fB\1\\fR", text)
    return "\\&" + text if text.startswith((".", "'")) else text


def man_entries():
    lines = []
    for field in FIELDS:
        lines += [".TP", ".B " + field.name,
                  _roff("%s; %s." % (_type_words(field),
                                     "required" if field.required
                                     else "default " + _default_words(field))),
                  _roff(field.doc[0].upper() + field.doc[1:] + ".")]
    return "\n".join(lines) + "\n"


# --- the files ------------------------------------------------------------------

def _with_block(text, block, body, where):
    begin, end = block
    if text.count(begin) != 1 or text.count(end) != 1 or \
            text.index(begin) > text.index(end):
        raise ValueError("%s: needs one %r line, then one %r line"
                         % (where, begin.strip(), end.strip()))
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    return head + begin + body + end + tail


def generated(root=ROOT):
    """{path under root: the text it must hold}."""
    out = {os.path.join("schema", FILES[kind][0]): schema_text(kind)
           for kind in FILES}
    for path, block, body in ((README, README_BLOCK, markdown_table()),
                              (MAN_PAGE, MAN_BLOCK, man_entries())):
        with open(os.path.join(root, path), encoding="utf-8") as handle:
            out[path] = _with_block(handle.read(), block, body, path)
    return out


def stale(root=ROOT):
    """The generated files whose text differs from what they must hold."""
    out = []
    for path, text in sorted(generated(root).items()):
        try:
            with open(os.path.join(root, path), encoding="utf-8") as handle:
                current = handle.read()
        except FileNotFoundError:
            current = None
        if current != text:
            out.append(path)
    return out


def write(root=ROOT):
    for path, text in sorted(generated(root).items()):
        target = os.path.join(root, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w", encoding="utf-8") as handle:
            handle.write(text)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m diprocd.schema",
        description="The JSON Schemas and the field tables, from spec.py.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true",
                        help="rewrite the generated files in the tree")
    action.add_argument("--check", action="store_true",
                        help="exit 1 naming each generated file that differs")
    parser.add_argument("--root", default=ROOT,
                        help="the source tree (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.write:
        write(args.root)
        return 0
    differ = stale(args.root)
    for path in differ:
        print("%s: differs from what `make docs` writes" % path,
              file=sys.stderr)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
