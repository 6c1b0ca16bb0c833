"""Property-based fuzzing of every input surface, in process: whatever a
file or a peer sends, the readers raise only their own error types
(ConfigError, ProtocolError), the daemons' handlers never raise, and a
valid definition survives a round trip.

The end-to-end half (real daemons fed generated broken input) is in
tests/test_fuzz_daemons.py; every crash found is kept as a regression case
in tests/corpus/.
"""

import logging
import os

import pytest
import simplejson as json
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diprocd import client as client_mod
from diprocd import config, keys, ledger, master as master_mod, protocol
from diprocd.errors import ConfigError, ProtocolError
from helpers import free_port

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

# Text a JSON writer would not produce but a file or a peer may hold: put
# in as a marker string, swapped for the raw text after dumping.
RAW = {"<1e400>": "1e400", "<-1e400>": "-1e400", "<big-int>": "9" * 5000,
       "<nan>": "NaN", "<deep>": "[" * 50000 + "]" * 50000,
       "<surrogate>": '"\\udc80"', "<nested>": "[" * 40 + "]" * 40}
HOSTILE = st.sampled_from(
    sorted(RAW) + ["ro\0ot", "/tmp/a\0b", "\0", "", "x" * 300, "rel/path",
                   "nobody", "root", "0", "-1", 2 ** 63, 2 ** 64, -1, 0, 1.5,
                   True, None, [], {}, [[]], {"a": "b"}, ["a", 1], ["\0"],
                   {"A": "x\0y"}, {"": "v"}, {"A=B": "v"}, "TERM", "SIGKILL",
                   "NOPE", 0, 99, "022", "0o777", "999", "%H", "tcp://x:1"])
# Scalars and trees JSON can carry, hostile values among them.
SCALARS = (st.none() | st.booleans()
           | st.integers(min_value=-2 ** 70, max_value=2 ** 70)
           | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(max_size=12) | HOSTILE)
JSON = st.recursive(SCALARS, lambda children: st.lists(children, max_size=4)
                    | st.dictionaries(st.text(max_size=8), children,
                                      max_size=4), max_leaves=12)
PROC_KEYS = ["name", "run"] + sorted(config.PROC_FIELDS)
VALID_PROCESS = st.fixed_dictionaries(
    {"name": st.from_regex(r"\A[a-z][a-z0-9._-]{0,20}\Z"),
     "run": st.sampled_from(["/bin/sleep", "/usr/bin/env"])},
    optional={"args": st.lists(st.text(alphabet=st.characters(
                  blacklist_characters="\0", blacklist_categories=["Cs"]),
                  max_size=8), max_size=3),
              "env": st.dictionaries(st.from_regex(r"\A[A-Z_]{1,8}\Z"),
                                     st.text(max_size=8).filter(
                                         lambda t: "\0" not in t), max_size=3),
              "cwd": st.sampled_from(["/", "/tmp", "work"]),
              "restart": st.booleans(),
              "stop_signal": st.sampled_from(["TERM", "INT", 9, "SIGHUP"]),
              "stop_timeout": st.floats(min_value=0, max_value=86400),
              "umask": st.sampled_from(["022", "0o077", 0o027]),
              "logs": st.sampled_from(["/dev/null", "/var/log/x.log"])})


def _spoil(process, changes):
    process = dict(process)
    for key, value in changes:
        process[key] = value
    return process


# A valid process with one to three fields made hostile (so the fuzz gets
# past the name check into every field), or anything at all.
PROCESS = (st.builds(_spoil, VALID_PROCESS, st.lists(st.tuples(
    st.sampled_from(PROC_KEYS + ["colour"]), HOSTILE | JSON), min_size=1,
    max_size=3)) | JSON)
PROCS = st.lists(PROCESS, max_size=4) | JSON


def dumps(value):
    """As a careless or hostile writer would: NaN, 1e400, lone surrogates,
    deep nesting and all."""
    text = json.dumps(value, ignore_nan=False, allow_nan=True)
    for marker, raw in RAW.items():
        text = text.replace('"%s"' % marker, raw)
    return text.encode("utf-8", "surrogatepass")


def top_level(keys):
    return st.dictionaries(st.sampled_from(keys + ["bogus"]), HOSTILE | JSON,
                           max_size=len(keys) + 1) | JSON


@FUZZ
@given(procs=PROCS, check_users=st.booleans())
def test_validate_procs_only_reports_problems(procs, check_users):
    specs, problems, warnings = config.validate_procs(
        procs, "w.json", pid_dir="/run/x", check_users=check_users)
    assert all(isinstance(p, str) for p in problems + warnings)
    for spec in specs:
        hash(spec)
        spec.fingerprint()


@FUZZ
@given(doc=top_level(list(config.WORKER_KEYS)), procs=PROCS, raw=st.binary())
def test_worker_file_raises_only_config_error(tmp_path, doc, procs, raw):
    if isinstance(doc, dict) and "procs" in doc:
        doc["procs"] = procs
    for data in (dumps(doc), raw):
        assert_loader_safe(config.load_worker_config, tmp_path, data)


@FUZZ
@given(doc=top_level(list(config.MASTER_KEYS)),
       nodes=st.dictionaries(st.text(max_size=6), PROCS, max_size=3))
def test_master_file_raises_only_config_error(tmp_path, doc, nodes):
    if isinstance(doc, dict):
        doc["nodes"] = nodes
    data = dumps(doc)
    assert_loader_safe(config.load_master_config, tmp_path, data)


@FUZZ
@given(doc=top_level(list(config.CLIENT_KEYS)))
def test_client_file_raises_only_config_error(tmp_path, doc):
    data = dumps(doc)
    assert_loader_safe(config.load_client_config, tmp_path, data)


def assert_loader_safe(loader, tmp_path, data):
    path = str(tmp_path / "fuzz.json")
    with open(path, "wb") as handle:
        handle.write(data)
    try:
        loaded = loader(path)
    except ConfigError as err:
        assert err.problems and all(isinstance(p, str) for p in err.problems)
        return
    # Whatever loads must be something the daemons can encode again.
    json.dumps(dataclass_values(loaded), allow_nan=False)


def dataclass_values(loaded):
    values = dict(vars(loaded))
    values["procs"] = [s.to_json() for s in values.get("procs", ())]
    return values


BODY = st.dictionaries(st.sampled_from(["v", "node", "epoch", "seq", "procs",
                                        "heartbeat", "status"]), JSON,
                       max_size=7)


@FUZZ
@given(frames=st.lists(st.binary(max_size=40), max_size=4),
       body=BODY | JSON, node=st.sampled_from(["node1", "node10", "", "n\0"]),
       kind=st.sampled_from([b"procs", b"hello", b"status", b"x"]))
def test_wire_decoders_raise_only_protocol_error(frames, body, node, kind):
    if isinstance(body, dict):
        body.setdefault("v", 1)
        body.setdefault("node", node)
    encoded = dumps(body)
    for message in (frames, [node.encode() + b"\0", kind, encoded],
                    [kind, node.encode() + b"\0", encoded]):
        try:
            protocol.decode_update(message, "node1")
        except ProtocolError:
            pass
        try:
            protocol.decode_report(message)
        except ProtocolError:
            pass


def make_client(tmp_path):
    conf = str(tmp_path / "worker.json")
    with open(conf, "w") as handle:
        json.dump({"pid_file": str(tmp_path / "w.pid"), "procs": []}, handle)
    path = str(tmp_path / "client.json")
    with open(path, "w") as handle:
        json.dump({"pid_file": str(tmp_path / "c.pid"),
                   "master_stats": "tcp://127.0.0.1:%d" % free_port(),
                   "master_updates": "tcp://127.0.0.1:%d" % free_port(),
                   "node_name": "node1", "conf_file": conf}, handle)
    return client_mod.Client(config.load_client_config(path),
                             logging.getLogger("fuzz-client")), conf


@FUZZ
@given(procs=PROCS, seq=st.integers(min_value=0, max_value=2 ** 40))
def test_the_client_never_raises_on_an_update(tmp_path, procs, seq):
    client, conf = make_client(tmp_path)
    body = {"v": 1, "node": "node1", "epoch": "e", "seq": seq, "procs": procs}
    client.on_frames([b"node1\0", b"procs",
                      dumps(body)])
    # The worker's file is valid for the worker whatever was received.
    config.load_worker_config(conf)


class FakePub:
    def send_multipart(self, frames, copy=True):
        protocol.decode_update(frames, frames[0][:-1].decode())


@FUZZ
@given(body=BODY | JSON, node=st.text(min_size=1, max_size=8),
       kind=st.sampled_from([b"hello", b"status"]))
def test_the_master_never_raises_on_a_report(tmp_path, body, node, kind):
    path = str(tmp_path / "master.json")
    with open(path, "w") as handle:
        json.dump({"pid_file": str(tmp_path / "m.pid"),
                   "master_stats": "tcp://127.0.0.1:1",
                   "master_updates": "tcp://127.0.0.1:2",
                   "nodes": {"node1": []}}, handle)
    master = master_mod.Master(config.load_master_config(path),
                               logging.getLogger("fuzz-master"))
    master.pub = FakePub()
    master.lists.apply(master.config.nodes)
    if isinstance(body, dict):
        body.setdefault("v", 1)
        body.setdefault("node", node)
    try:
        frame = node.encode("utf-8") + b"\0"
    except UnicodeEncodeError:
        frame = b"n\0"
    master.on_frames([kind, frame, dumps(body)])
    json.dumps(master.nodes_document(), allow_nan=False)


@FUZZ
@given(doc=st.dictionaries(st.sampled_from(["procs", "records", "boot_id",
                                            "version"]), JSON, max_size=4),
       journal=st.lists(st.binary(max_size=60), max_size=4))
def test_the_ledger_reads_anything_without_raising(tmp_path, doc, journal):
    book = ledger.Ledger(str(tmp_path / "w.pid"), "boot")
    if isinstance(doc, dict):
        doc["boot_id"] = "boot"
    with open(book.status_path, "wb") as handle:
        handle.write(dumps(doc))
    with open(book.journal_path, "wb") as handle:
        handle.write(b"\n".join(journal))
    for name, record in book.recall(logging.getLogger("fuzz")).items():
        assert record.pid is None or isinstance(record.pid, int)
        record.stop_spec(name)
    ledger.read_view(book.status_path)


@FUZZ
@given(items=st.lists(VALID_PROCESS, max_size=5, unique_by=lambda p: p["name"]))
def test_a_valid_list_round_trips(items):
    specs, problems, _ = config.validate_procs(items, "w.json",
                                               pid_dir="/run/x")
    assert problems == [] and len(specs) == len(items)
    again, problems, _ = config.validate_procs(
        [spec.to_json() for spec in specs], "w.json", pid_dir="/run/x")
    assert problems == [] and again == specs


CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
LOADERS = {"worker": config.load_worker_config,
           "master": config.load_master_config,
           "client": config.load_client_config}


def corpus_cases():
    for kind in sorted(LOADERS):
        folder = os.path.join(CORPUS, kind)
        for name in sorted(os.listdir(folder)):
            yield kind, os.path.join(folder, name)


def test_the_corpus_of_crashes_is_refused_cleanly():
    """Every input that once killed a daemon: now a ConfigError naming it."""
    cases = list(corpus_cases())
    assert len(cases) >= 8
    for kind, path in cases:
        try:
            LOADERS[kind](path)
        except ConfigError as err:
            assert all(p.startswith(path) for p in err.problems), err.problems
        else:
            raise AssertionError("%s: accepted" % path)


Z85 = st.text(alphabet="0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ"
              "RSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#", min_size=38, max_size=42)
KEY_LINE = st.builds(lambda name, key, quote: '    %s = %s%s%s' % (
    name, quote, key, quote), st.sampled_from(["public-key", "secret-key",
                                               "secret", "public-key "]),
    Z85, st.sampled_from(['"', "'", ""]))


@FUZZ
@given(lines=st.lists(KEY_LINE | st.text(max_size=60), max_size=6),
       raw=st.binary(max_size=200), secret=st.booleans())
def test_key_files_raise_only_config_error(tmp_path, lines, raw, secret):
    path = str(tmp_path / "fuzz.key")
    for data in ("\n".join(lines).encode("utf-8", "surrogatepass"), raw):
        with open(path, "wb") as handle:
            handle.write(data)
        os.chmod(path, 0o600)  # safe: the parser is what is fuzzed
        try:
            pair = keys.read_key_file(path, "key", secret=secret)
        except ConfigError as err:
            assert err.problems and "fuzz.key" in err.problems[0]
            continue
        assert len(pair.public) == 40 and (not secret or pair.secret)


OPENER = None


@FUZZ
@given(sealed=st.binary(max_size=200))
def test_opening_junk_raises_only_protocol_error(sealed):
    global OPENER
    if OPENER is None:
        import zmq
        OPENER = keys.Opener(zmq.curve_keypair()[1], zmq.curve_keypair()[0])
    with pytest.raises(ProtocolError):
        OPENER.open(sealed)
