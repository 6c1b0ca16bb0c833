"""The generated files (JSON Schemas, the README's and the man page's field
tables) are what the generator writes, and the schemas say what the
validator says."""

import json
import os
import shutil
import signal
import subprocess
import sys

import jsonschema
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from diprocd import config, jsonin, protocol, schema, spec
from diprocd.errors import ConfigError
from helpers import ROOT, client_doc, master_doc, run_command, worker_doc

KINDS = sorted(schema.FILES)
COMMAND = {kind: schema.FILES[kind][1] for kind in KINDS}
LOADER = {"worker": config.load_worker_config,
          "master": config.load_master_config,
          "client": config.load_client_config}


def committed_schema(kind):
    with open(os.path.join(ROOT, "schema", schema.FILES[kind][0])) as handle:
        return json.load(handle)


def validator(kind):
    return jsonschema.Draft202012Validator(committed_schema(kind))


def test_committed_files_are_what_the_generator_writes():
    """Fails when spec.FIELDS or a check changed and `make docs` was not
    run, or when a generated file was edited by hand."""
    result = subprocess.run(
        [sys.executable, "-m", "diprocd.schema", "--check"], cwd=ROOT,
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, (
        result.stderr + "run `make docs` and commit what it writes")
    assert schema.stale(ROOT) == []


def test_a_hand_edit_or_a_missing_file_is_named(tmp_path):
    for path in schema.generated(ROOT):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.join(ROOT, path), tmp_path / path)
    assert schema.stale(str(tmp_path)) == []
    readme = tmp_path / "README.md"
    readme.write_text(readme.read_text().replace("| `umask` |", "| `mask` |"))
    man = tmp_path / "man" / "dpd-workerd.8"
    man.write_text(man.read_text().replace(".B umask\n", ".B mask\n"))
    (tmp_path / "schema" / "diprocd-client.schema.json").unlink()
    result = subprocess.run(
        [sys.executable, "-m", "diprocd.schema", "--check", "--root",
         str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "%s: differs from what `make docs` writes" % path for path in (
            "README.md", "man/dpd-workerd.8",
            "schema/diprocd-client.schema.json")]
    schema.write(str(tmp_path))
    assert schema.stale(str(tmp_path)) == []


@pytest.mark.parametrize("kind", KINDS)
def test_schemas_are_valid_draft_2020_12(kind):
    document = committed_schema(kind)
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(document)


@pytest.mark.parametrize("kind", KINDS)
def test_schema_keys_are_the_loaders_keys(kind):
    document = committed_schema(kind)
    table = schema.FILES[kind][2]
    assert list(document["properties"]) == list(table)
    assert document["required"] == [k for k, rule in table.items()
                                     if rule.required]
    assert document["additionalProperties"] is False


def test_master_and_client_have_their_curve_keys_and_control():
    master = committed_schema("master")["properties"]
    client = committed_schema("client")["properties"]
    for key in ("curve_secret_key", "curve_clients_dir",
                "curve_operators_dir", "master_control", "heartbeat",
                "silent_after"):
        assert key in master, key
    for key in ("curve_secret_key", "curve_master_key", "node_name",
                "conf_file", "status_interval"):
        assert key in client, key
    assert master["heartbeat"]["default"] == 15
    assert client["status_interval"]["default"] == 5


def test_process_fields_are_the_table():
    process = committed_schema("worker")["$defs"]["process"]
    assert list(process["properties"]) == [f.name for f in spec.FIELDS]
    assert process["required"] == ["name", "run"]
    for field in spec.FIELDS:
        assert process["properties"][field.name]["description"] == \
            field.doc.replace("`", "")
    assert process["properties"]["stop_timeout"]["default"] == 10
    assert process["properties"]["umask"]["default"] == "0o022"


def test_readme_and_man_page_list_every_field():
    with open(os.path.join(ROOT, "README.md")) as handle:
        readme = handle.read()
    with open(os.path.join(ROOT, "man", "dpd-workerd.8")) as handle:
        man = handle.read()
    table = readme.split(schema.README_BLOCK[0])[1].split(
        schema.README_BLOCK[1])[0]
    entries = man.split(schema.MAN_BLOCK[0])[1].split(schema.MAN_BLOCK[1])[0]
    for field in spec.FIELDS:
        assert "| `%s` |" % field.name in table
        assert ".B %s\n" % field.name in entries


EXAMPLES = {"diprocd-worker.example.json": "worker",
            "diprocd-emptyworker.example.json": "worker",
            "diprocd-master.example.json": "master",
            "diprocd-client.example.json": "client"}


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_examples_validate(example):
    with open(os.path.join(ROOT, "examples", example)) as handle:
        document = json.load(handle)
    validator(EXAMPLES[example]).validate(document)


@pytest.mark.parametrize("kind", KINDS)
def test_a_schema_key_is_accepted_without_warning(kind, tmp_path):
    """Editors find the schema through "$schema": the daemons ignore it."""
    docs = {"worker": worker_doc(tmp_path, [{"name": "a",
                                             "run": "/bin/true"}]),
            "master": master_doc(tmp_path, {"n1": []}),
            "client": client_doc(tmp_path)}
    (tmp_path / "worker.json").write_text("{}")
    document = dict(docs[kind], **{"$schema": "file://%s/%s" % (
        schema.INSTALLED, schema.FILES[kind][0])})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(document))
    validator(kind).validate(document)
    assert LOADER[kind](str(path)).warnings == []
    result = run_command(COMMAND[kind], ["--check", str(path)])
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    document["$schema"] = 1
    path.write_text(json.dumps(document))
    result = run_command(COMMAND[kind], ["--check", str(path)])
    assert result.returncode == 1
    assert 'key "$schema": must be a string' in result.stderr
    assert not validator(kind).is_valid(document)


# --- the schema and the validator agree --------------------------------------
#
# Generated values, valid and spoiled, go through JSON and jsonin (what a
# file can hold), then to the validator and to the schema: the validator
# accepts them with no problem and no warning exactly when the schema
# validates. (Unknown fields and keys: the validator warns, the schema
# refuses, so that an editor marks a misspelt one.)
#
# Left out, because a schema cannot say it (and the README says so):
# - what depends on this machine: users (check_users=False, as the master);
# - what involves several processes: duplicate names, two processes with one
#   pid_file, dependencies on unknown names, on themselves, cycles (the
#   lists are built without them: distinct names and pid files, each
#   process depending only on earlier, well-named ones);
# - a name's bound in UTF-8 bytes (the schema's maxLength counts
#   characters): long names are ASCII here, where the two are one;
# - a client's node name's bound after "%H" is replaced (the hostname's
#   length): generated names stay under it;
# - 1.0 as a uid, a signal or a umask: JSON Schema counts it an integer,
#   the validator wants an int (no generated value is an integral float
#   there).
# test_the_differences_left_out pins each of these down.


AGREE = settings(max_examples=300, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])

# Characters that matter to some check, and some that should not.
TRICKY = "/\0\n \t=.%H:abxyz019780oOsSiIgGtTeErRmMkKlL_-\u00e9\u017f\u0131\u3000"
TEXT = st.text(alphabet=TRICKY, max_size=12) | st.text(max_size=12)
NOT_NUL = st.text(st.characters(blacklist_characters="\0"), max_size=12)
PREFIXES = st.sampled_from(["", "/", "//", "/./", "tcp://", "ipc://", "ws://",
                            "ftp://", "SIG", "sig", "Sig", "0o", "0O", "0",
                            "00", "%H", "%%", ".", "..", " "])
SIGNAL_NAMES = sorted(name[3:] for name in signal.Signals.__members__)


@st.composite
def any_case(draw, words):
    word = draw(words)
    flips = draw(st.lists(st.booleans(), min_size=len(word),
                          max_size=len(word)))
    return "".join(c.lower() if flip else c for c, flip in zip(word, flips))


SIGNALISH = st.builds(lambda sig, name, tail: sig + name + tail,
                      any_case(st.sampled_from(["", "SIG", "SIGSIG"])),
                      any_case(st.sampled_from(SIGNAL_NAMES + ["FOO", ""])),
                      st.sampled_from(["", "", "", "\n", " ", "1"]))
OCTALISH = st.builds(lambda prefix, digits, tail: prefix + digits + tail,
                     st.sampled_from(["", "0o", "0O", "0x", "+", "-", " "]),
                     st.text(alphabet="0123456789_", max_size=5),
                     st.sampled_from(["", "", "", "\n", " "]))
STRINGS = (TEXT | st.builds(str.__add__, PREFIXES, TEXT) | SIGNALISH
           | OCTALISH | st.sampled_from(["x" * 200, "x" * 201, "/" + "x" * 300,
                                         "tcp://h:1\n", "tcp://h 1",
                                         "\u017figterm", "s\u0131gterm"]))
# JSON numbers as files hold them: no NaN, 64 bits at most.
NUMBERS = (st.integers(min_value=-2 ** 63, max_value=2 ** 63 - 1)
           | st.integers(min_value=-3, max_value=600)
           | st.floats(allow_nan=False, allow_infinity=False)
           | st.floats(min_value=-1, max_value=90000))
SCALARS = st.none() | st.booleans() | NUMBERS | STRINGS
JUNK = st.recursive(SCALARS, lambda children: st.lists(children, max_size=3)
                    | st.dictionaries(STRINGS, children, max_size=3),
                    max_leaves=8)


def as_in_a_file(value):
    """``value`` as a file would give it back: JSON, then jsonin; None
    when jsonin refuses what no file can carry."""
    try:
        return jsonin.loads(json.dumps(value), "generated", ConfigError,
                            config.MAX_FILE_BYTES)
    except ConfigError:
        return None


def integral_float(value):
    return isinstance(value, float) and value.is_integer()


def accepted(check, value):
    try:
        check(value)
    except config.Invalid:
        return False
    return True


def every_check():
    """(where, check) of every key of the three files and every field type."""
    out = [("field type %s" % name, check)
           for name, check in config.FIELD_TYPES.items()]
    for kind in KINDS:
        for key, rule in schema.FILES[kind][2].items():
            if rule.check is not None and key != "nodes":
                out.append(("%s key %s" % (kind, key), rule.check))
    return out


ENDPOINTISH = st.builds(
    lambda scheme, rest, tail: scheme + rest + tail,
    st.sampled_from(["tcp://", "ipc://", "inproc://", "pgm://", "epgm://",
                     "ws://", "wss://", "udp://", "tcp:/", "TCP://", ""]),
    st.sampled_from(["127.0.0.1:5555", "[::1]:1", "*:1", "/run/x", "", " "])
    | TEXT, st.sampled_from(["", "", "\n", " x", "\t"]))
# By a check's schema title: values near what it takes, on both sides.
NEAR = {
    "ZeroMQ endpoint": ENDPOINTISH,
    "signal name or number": SIGNALISH | st.integers(-1, 70),
    "octal string or number": OCTALISH | st.integers(-2, 520),
    "seconds": NUMBERS,
    "HOST:PORT": st.builds(
        lambda host, port, tail: host + port + tail,
        st.sampled_from(["127.0.0.1", "[::1]", "localhost", "", "[]", ":",
                         "a b", "[::1", "::1"]),
        st.sampled_from([":1", ":65535", ":65536", ":0", ":080", ":", "",
                         ":99999"]) | st.integers(-1, 70000).map(
                             lambda n: ":%d" % n),
        st.sampled_from(["", "", "\n", " "])),
    "absolute path": st.builds(str.__add__, PREFIXES, TEXT),
    "user name or uid": STRINGS | st.integers(-2, 2 ** 63 - 1),
    "string": STRINGS,
    "path": STRINGS,
    "list of strings": st.lists(STRINGS | NUMBERS, max_size=3),
    "list of process names": st.lists(STRINGS | st.none(), max_size=3),
    "object of strings": st.dictionaries(STRINGS, STRINGS | NUMBERS,
                                         max_size=3),
}
CHECK_TARGETS = {
    "exec": st.lists(STRINGS | NUMBERS, max_size=3) | st.builds(
        lambda first, rest: [first] + rest, st.sampled_from(
            ["/bin/true", "true", "/", "", "/a\0"]), st.lists(STRINGS,
                                                             max_size=2)),
    "tcp": NEAR["HOST:PORT"] | st.sampled_from(
        ["256.0.0.1:1", "1.2.3:4", "01.2.3.4:5", "localhost:80"]),
    "http": st.builds(
        lambda scheme, host, port, path: scheme + host + port + path,
        st.sampled_from(["http://", "https://", "HTTP://", "ftp://", ""]),
        st.sampled_from(["127.0.0.1", "[::1]", "localhost", "a.b", "", "[]",
                         "10.0.0.256"]),
        st.sampled_from(["", ":80", ":0", ":65536", ":"]),
        st.sampled_from(["", "/", "/health?x=1", "/a b", "/\n", "/\u00e9"])),
}
CHECK_NUMBERS = st.integers(-1, 1001) | st.floats(-1, 90000) | NUMBERS \
    | st.sampled_from([0, 0.01, 0.005, 1000, 3600, 3600.5, 86400, 2.0])


@st.composite
def checks(draw):
    """Health checks near what config.health_check takes, both sides."""
    value = {}
    for kind in draw(st.lists(st.sampled_from(sorted(CHECK_TARGETS)),
                              min_size=0, max_size=2, unique=True)):
        value[kind] = draw(CHECK_TARGETS[kind])
    for key in draw(st.sets(st.sampled_from(
            ["interval", "timeout", "failures", "grace", "every"]))):
        value[key] = draw(CHECK_NUMBERS | SCALARS)
    return value


@st.composite
def valid_checks(draw):
    """Health checks config.health_check takes (the edges among them)."""
    kind = draw(st.sampled_from(sorted(CHECK_TARGETS)))
    value = {kind: draw({
        "exec": st.builds(lambda first, rest: [first] + rest, st.builds(
            str.__add__, st.just("/"), NOT_NUL), st.lists(NOT_NUL,
                                                         max_size=2)),
        "tcp": st.sampled_from(["127.0.0.1:1", "[::1]:65535", "localhost:80",
                                "255.255.255.255:8", "0.0.0.0:99"]),
        "http": st.sampled_from(["http://127.0.0.1", "http://[::1]:8/",
                                 "http://localhost:65535/a?b=c&d=%20"]),
    }[kind])}
    for key, (low, high) in sorted(config.CHECK_NUMBERS.items()):
        if draw(st.booleans()):
            value[key] = draw(st.integers(low, high) if key == "failures"
                              else st.sampled_from([low, high]) | st.floats(
                                  low, high))
    return value


NEAR["health check"] = checks() | valid_checks() | st.builds(
    lambda value, key, junk: dict(value, **{key: junk}), valid_checks(),
    st.sampled_from(["exec", "tcp", "http", "interval", "timeout",
                     "failures", "grace", "other"]), SCALARS)


@pytest.mark.parametrize("where, check", every_check(),
                         ids=[where for where, _ in every_check()])
@AGREE
@given(data=st.data())
def test_each_check_and_its_schema_agree(where, check, data):
    near = NEAR.get(check.schema["title"], STRINGS)
    value = as_in_a_file(data.draw(JUNK | near, label="value"))
    if "integer" in json.dumps(check.schema):
        assume(not integral_float(value))
    if check is config.node_name and isinstance(value, str):
        assume(len(config.resolve_node_name(value).encode("utf-8"))
               <= protocol.MAX_NODE_NAME_BYTES)
    if check is config.process_name and isinstance(value, str):
        assume(value.isascii() or len(value) <= 50)
    by_schema = jsonschema.Draft202012Validator(check.schema).is_valid(value)
    event("valid" if by_schema else "refused")
    assert accepted(check, value) == by_schema, (where, value)


@AGREE
@given(value=JUNK | st.dictionaries(STRINGS, JUNK, max_size=3))
def test_node_names_and_their_schema_agree(value):
    """The master's node names (protocol.check_node_name), as the schema
    gives them for its "nodes" object."""
    assume(not isinstance(value, str) or len(value) <= 50)
    try:
        protocol.check_node_name(value)
        checked = True
    except protocol.ProtocolError:
        checked = False
    by_schema = isinstance(value, str) and jsonschema.Draft202012Validator(
        {"propertyNames": schema.NODE_NAME}).is_valid({value: 1})
    assert checked == by_schema, value


def _unique(index):
    return st.text(alphabet=st.characters(blacklist_characters="/\0."),
                   max_size=20).map(lambda text: "%s#%d" % (text, index))


def valid_fields(index, earlier):
    """Strategies of a valid value for each field of process #index."""
    absolute = st.builds(str.__add__, st.just("/"), NOT_NUL)
    names = (st.lists(st.sampled_from(earlier), unique=True) if earlier
             else st.just([]))
    return {
        "name": _unique(index),
        "run": absolute,
        "args": st.lists(NOT_NUL, max_size=3),
        "user": (st.text(st.characters(blacklist_characters="\0"),
                         min_size=1, max_size=10)
                 | st.integers(0, 2 ** 63 - 1) | st.none()),
        "chroot": absolute | st.none(),
        "env": st.dictionaries(
            st.text(st.characters(blacklist_characters="=\0"), min_size=1,
                    max_size=8), NOT_NUL, max_size=3),
        "pid_file": st.none() | _unique(index).map(
            lambda name: "/pids/" + name),
        "logs": absolute | st.none(),
        "cwd": st.text(st.characters(blacklist_characters="\0"), min_size=1,
                       max_size=10),
        "write_pid": st.booleans(),
        "daemon": st.just(False),
        "restart": st.booleans(),
        "stop_signal": (st.sampled_from(sorted({int(s) for s in
                                                 signal.Signals}))
                        | any_case(st.sampled_from(
                            SIGNAL_NAMES + ["SIG" + n for n in SIGNAL_NAMES]))),
        "stop_timeout": (st.integers(0, 86400)
                         | st.floats(min_value=0, max_value=86400)),
        "umask": (st.integers(0, 0o777) | st.builds(
            "{}{:03o}".format, st.sampled_from(["", "0", "0o", "0O", "00"]),
            st.integers(0, 0o777))),
        "depends": names,
        "check": st.none() | valid_checks(),
    }


SPOILS = ["junk", "junk", "drop", "null", "unknown", "daemon with write_pid",
          "daemon without pid_file", "not an object"]


@st.composite
def process_lists(draw):
    procs, well_named = [], []
    for index in range(draw(st.integers(0, 4))):
        fields = valid_fields(index, well_named)
        chosen = draw(st.sets(st.sampled_from(sorted(fields))))
        item = {"name": draw(fields["name"]), "run": draw(fields["run"])}
        for field in sorted(chosen):
            item[field] = draw(fields[field])
        if draw(st.booleans()):  # a valid daemon
            item.update(daemon=True, write_pid=False,
                        pid_file=draw(fields["pid_file"]))
        name_kept = True
        for spoil in draw(st.lists(st.sampled_from(SPOILS), max_size=2)):
            field = draw(st.sampled_from([f.name for f in spec.FIELDS]))
            if not isinstance(item, dict):
                break
            if spoil == "junk":
                junk = draw(JUNK)
                if field == "depends" and isinstance(junk, list) and all(
                        isinstance(v, str) and "\0" not in v for v in junk):
                    junk.append(1)  # a list of names: the list's business
                item[field] = junk
            elif spoil == "drop":
                item.pop(field, None)
            elif spoil == "null":
                item[field] = None
            elif spoil == "unknown":
                item[draw(STRINGS.filter(lambda k: k not in spec.DEFAULTS))] = 1
            elif spoil == "daemon with write_pid":
                item.update(daemon=True)
                item.pop("write_pid", None) if draw(st.booleans()) else \
                    item.update(write_pid=True)
            elif spoil == "daemon without pid_file":
                item.update(daemon=True, write_pid=False)
                item.pop("pid_file", None)
            elif spoil == "not an object":
                item = draw(JUNK.filter(lambda v: not isinstance(v, dict)))
            if not isinstance(item, dict) or field == "name" and spoil in (
                    "junk", "drop", "null"):
                name_kept = False
        if name_kept:
            well_named.append(item["name"])
        procs.append(item)
    return procs


def _pid_file(item):
    value = item.get("pid_file") if isinstance(item, dict) else None
    if isinstance(value, str) and value.startswith("/"):
        return os.path.normpath(value)
    return None


@AGREE
@given(procs=process_lists() | JUNK.filter(lambda v: not isinstance(v, list)))
def test_validator_accepts_exactly_what_the_schema_validates(procs):
    procs = as_in_a_file(procs)
    assume(procs is not None)
    items = procs if isinstance(procs, list) else []
    names = [item["name"] for item in items
             if isinstance(item, dict) and isinstance(item.get("name"), str)]
    assume(len(set(names)) == len(names))  # duplicates: the list's business
    pid_files = [p for p in map(_pid_file, items) if p is not None]
    assume(len(set(pid_files)) == len(pid_files))
    for item in items:
        if isinstance(item, dict):
            assume(not any(integral_float(item.get(key))
                           for key in ("user", "umask", "stop_signal")))
    document = {"pid_file": "/run/dpd-workerd.pid", "procs": procs}
    errors = [e.message for e in validator("worker").iter_errors(document)]
    _, problems, warnings = config.validate_procs(
        procs, "w.json", pid_dir=None, check_users=False)
    event("valid" if not errors else "refused")
    assert (not problems and not warnings) == (not errors), (
        procs, problems, warnings, errors)


def test_the_differences_left_out():
    """What the agreement leaves out is what this says, and no more."""
    worker = validator("worker")

    def both(procs):
        _, problems, _ = config.validate_procs(procs, "w.json", pid_dir=None,
                                               check_users=False)
        return problems, worker.is_valid({"pid_file": "/w.pid",
                                          "procs": procs})

    for field, value in (("user", 1.0), ("umask", 18.0),
                         ("stop_signal", 15.0)):
        problems, valid = both([{"name": "a", "run": "/a", field: value}])
        assert problems and valid, field
    problems, valid = both([{"name": "\u00e9" * 150, "run": "/a"}])
    assert "longer than 200 bytes" in problems[0] and valid
    for procs, why in (
            ([{"name": "a", "run": "/a"}, {"name": "a", "run": "/b"}],
             "duplicate name"),
            ([{"name": "a", "run": "/a", "pid_file": "/p"},
              {"name": "b", "run": "/a", "pid_file": "/x/../p"}],
             "also the pid file"),
            ([{"name": "a", "run": "/a", "depends": ["a"]}], "itself"),
            ([{"name": "a", "run": "/a", "depends": ["b"]}], "no process"),
            ([{"name": "a", "run": "/a", "depends": ["b"]},
              {"name": "b", "run": "/a", "depends": ["a"]}], "cycle")):
        problems, valid = both(procs)
        assert valid and any(why in p for p in problems), (procs, problems)
    _, problems, _ = config.validate_procs(
        [{"name": "a", "run": "/a", "user": "no-such-user-dpd"}], "w.json")
    assert problems and worker.is_valid(
        {"pid_file": "/w.pid",
         "procs": [{"name": "a", "run": "/a", "user": "no-such-user-dpd"}]})
