"""The one validator: every bad input named by file, process and field."""

import dataclasses
import os
import signal

import pytest

from diprocd import config, spec
from diprocd.errors import ConfigError
from helpers import run_command


def problems_of(procs, **kwargs):
    kwargs.setdefault("pid_dir", "/run/x")
    return config.validate_procs(procs, "w.json", **kwargs)


def test_defaults_are_the_seeds():
    specs, problems, warnings = problems_of([{"name": "a", "run": "/bin/true"}])
    assert problems == [] and warnings == []
    spec = specs[0]
    assert spec.args == () and spec.env == () and spec.chroot is None
    assert spec.pid_file == "/run/x/a.pid"
    assert spec.logs == "/dev/null" and spec.cwd == "/"
    assert spec.write_pid and not spec.daemon and spec.restart
    assert spec.stop_signal == signal.SIGTERM and spec.stop_timeout == 10
    assert spec.umask == 0o022 and spec.depends == ()
    assert spec.user == config.default_user()


def test_the_fields_live_once():
    """spec.FIELDS is the table: the spec's attributes and defaults, the
    validator's checks (one per type) and its null rule come from it."""
    names = [field.name for field in spec.FIELDS]
    attributes = dataclasses.fields(spec.ProcessSpec)
    assert [a.name for a in attributes] == names
    assert {a.name: a.default for a in attributes
            if a.default is not dataclasses.MISSING} == {
        f.name: f.default for f in spec.FIELDS if not f.required}
    assert list(config.PROC_FIELDS) == names[1:]  # the name: _process_label
    assert set(config.FIELD_TYPES) == {field.type for field in spec.FIELDS}
    assert config.NULL_IS_DEFAULT == ("user", "chroot", "pid_file",
                                      "give_up_after", "check", "memory_max")
    assert spec.REQUIRED == ("name", "run")


def test_every_problem_is_named():
    procs = [
        {"name": "web.1", "run": "sleep"},
        {"name": "web.1", "run": "/bin/true"},
        {"run": "/bin/true"},
        {"name": "u", "run": "/bin/true", "user": "no-such-user-dpd"},
        {"name": "d", "run": "/bin/true", "daemon": True, "pid_file": "/x.pid"},
        {"name": "t", "run": "/bin/true", "args": "x", "env": {"A": 1},
         "restart": "yes", "stop_signal": "NOPE", "umask": "99",
         "stop_timeout": -1, "logs": "rel.log"},
        "not an object",
    ]
    _, problems, _ = problems_of(procs)
    text = "\n".join(problems)
    assert 'w.json: process "web.1": field "run": must be an absolute path, got "sleep"' in text
    assert 'process "web.1": field "name": duplicate name' in text
    assert 'w.json: process #3: field "name": required' in text
    assert 'process "u": field "user": unknown user "no-such-user-dpd"' in text
    assert 'process "d": field "daemon": a daemon writes its own pid file' in text
    for field in ("args", "env", "restart", "stop_signal", "umask",
                  "stop_timeout", "logs"):
        assert 'process "t": field "%s"' % field in text
    assert "w.json: process #7: must be an object, got a string" in text


def test_the_restart_policy_fields():
    specs, problems, _ = problems_of([
        {"name": "a", "run": "/bin/true"},
        {"name": "b", "run": "/bin/true", "restart_delay": 2,
         "restart_delay_max": 30.5, "restart_delay_reset": 0,
         "give_up_after": 3},
        {"name": "c", "run": "/bin/true", "give_up_after": None}])
    assert problems == []
    a, b, c = specs
    assert (a.restart_delay, a.restart_delay_max, a.restart_delay_reset,
            a.give_up_after) == (0, 300, 60, None)
    assert (b.restart_delay, b.restart_delay_max, b.restart_delay_reset,
            b.give_up_after) == (2.0, 30.5, 0.0, 3)
    assert c.give_up_after is None
    bad = {"restart_delay": -1, "restart_delay_max": "300",
           "restart_delay_reset": 90000, "give_up_after": 0}
    for field, value in list(bad.items()) + [("give_up_after", 1.5),
                                            ("give_up_after", True),
                                            ("give_up_after", "3")]:
        _, problems, _ = problems_of([{"name": "t", "run": "/bin/true",
                                       field: value}])
        assert len(problems) == 1, (field, value, problems)
        assert problems[0].startswith('w.json: process "t": field "%s": '
                                      'must be ' % field), problems


def test_a_definition_without_the_new_fields_keeps_its_fingerprint():
    """What a worker before the restart policy recorded (these digests come
    from it): an upgraded worker adopts its processes, it does not restart
    them for a changed definition. Setting a new field changes it."""
    web = spec.ProcessSpec(name="web", run="/usr/bin/web", args=("-p", "80"),
                           env=(("A", "1"),), user="nobody",
                           pid_file="/run/web.pid")
    assert web.fingerprint() == "24c61605746b5adb"
    assert spec.ProcessSpec(name="-", run="/-").fingerprint() == \
        "99ffe132535f4ea2"
    explicit = dataclasses.replace(web, restart_delay=0, give_up_after=None)
    assert explicit.fingerprint() == web.fingerprint()
    for field in spec.ADDED_LATER:
        value = {"check": spec.CheckSpec("tcp", "127.0.0.1:1"),
                 "limits": (("core", (0, 0)),)}.get(field.name, 7)
        changed = dataclasses.replace(web, **{field.name: value})
        assert changed.fingerprint() != web.fingerprint(), field.name


def test_unknown_field_is_a_warning():
    specs, problems, warnings = problems_of(
        [{"name": "a", "run": "/bin/true", "colour": "red"}])
    assert problems == [] and len(specs) == 1
    assert warnings == ['w.json: process "a": unknown field "colour" (ignored)']


def test_dependencies_checked():
    _, problems, _ = problems_of([
        {"name": "a", "run": "/bin/true", "depends": ["b"]},
        {"name": "b", "run": "/bin/true", "depends": ["c"]},
        {"name": "c", "run": "/bin/true", "depends": ["a"]},
        {"name": "d", "run": "/bin/true", "depends": ["ghost"]},
    ])
    assert any("dependency cycle: a -> b -> c -> a" in p for p in problems)
    assert any('process "d": field "depends": no process named "ghost"' in p
               for p in problems)


def test_master_side_skips_users_and_pid_defaults():
    specs, problems, _ = problems_of(
        [{"name": "a", "run": "/bin/true", "user": "only-on-the-node"}],
        pid_dir=None, check_users=False)
    assert problems == [] and specs[0].pid_file is None


def test_signal_and_umask_forms():
    specs, problems, _ = problems_of([{"name": "a", "run": "/bin/true",
                                       "stop_signal": "int", "umask": "0o077"},
                                      {"name": "b", "run": "/bin/true",
                                       "stop_signal": 1, "umask": "027"}])
    assert problems == []
    assert specs[0].stop_signal == signal.SIGINT and specs[0].umask == 0o077
    assert specs[1].stop_signal == signal.SIGHUP and specs[1].umask == 0o027


def test_forms_the_schema_cannot_share_are_refused():
    """Found when the schema and the validator were made to agree: int()
    took a umask with a sign, a space or "_"; str.upper() made "\u017figterm"
    SIGTERM; "$" let an endpoint end in a newline; a NUL in a node name
    came back as "%"."""
    for umask in ("0 ", " 022", "+22", "0_22", "-0", "0o", "022\n", "1000"):
        with pytest.raises(config.Invalid):
            config.umask(umask)
    assert config.umask("0O777") == config.umask("0777") == 0o777
    for name in ("\u017figterm", "s\u0131gterm", "TERM\n"):
        with pytest.raises(config.Invalid):
            config.stop_signal(name)
    with pytest.raises(config.Invalid):
        config.endpoint("tcp://127.0.0.1:5555\n")
    with pytest.raises(config.Invalid):
        config.node_name("web\0%H")
    assert config.resolve_node_name("100%%-%H") == "100%-" + \
        config.socket.gethostname()


def test_spec_equality_is_the_diff():
    one, _, _ = problems_of([{"name": "a", "run": "/bin/true", "env": {"X": "1", "Y": "2"}}])
    two, _, _ = problems_of([{"name": "a", "run": "/bin/true", "env": {"Y": "2", "X": "1"}}])
    three, _, _ = problems_of([{"name": "a", "run": "/bin/true", "env": {"X": "2", "Y": "2"}}])
    assert one == two and one != three
    assert one[0].fingerprint() == two[0].fingerprint() != three[0].fingerprint()


def test_load_worker_config_errors(tmp_path):
    path = tmp_path / "w.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError) as err:
        config.load_worker_config(str(path))
    assert str(err.value).startswith("%s: not JSON: line 1 column 2" % path)
    path.write_text('{"procs": []}')
    with pytest.raises(ConfigError, match='missing required key "pid_file"'):
        config.load_worker_config(str(path))
    path.write_text('{"pid_file": "/tmp/x.pid", "procs": [], "extra": 1}')
    loaded = config.load_worker_config(str(path))
    assert loaded.warnings == ['%s: unknown key "extra" (ignored)' % path]
    with pytest.raises(ConfigError, match="cannot read"):
        config.load_worker_config(str(tmp_path / "missing.json"))


def test_check_command(tmp_path):
    path = tmp_path / "w.json"
    path.write_text('{"pid_file": "%s/w.pid", "procs": [{"name": "a", "run": "x"},'
                    '{"name": "b", "run": "/bin/true", "daemon": true}]}' % tmp_path)
    result = run_command("dpd-workerd", ["--check", str(path)])
    assert result.returncode == 1
    assert 'process "a": field "run": must be an absolute path' in result.stderr
    assert 'process "b": field "daemon"' in result.stderr
    assert not os.path.exists(tmp_path / "w.pid")
    path.write_text('{"pid_file": "%s/w.pid", "procs": [{"name": "a", "run": "/bin/true"}]}'
                    % tmp_path)
    result = run_command("dpd-workerd", ["--check", str(path)])
    assert result.returncode == 0, result.stderr


def test_a_torn_journal_line_spoils_only_itself(tmp_path):
    """The child writes its journal line itself, starting with a newline, so
    a line cut short by a full disk does not swallow the next one."""
    import pwd
    from diprocd import ledger, spawn
    from diprocd.spec import ProcessSpec
    book = ledger.Ledger(str(tmp_path / "w.pid"), "boot")
    path = tmp_path / "w.journal"
    path.write_bytes(b'\n1 2 {"name": "a", "ti')  # cut by a full disk
    book.open()
    try:
        spec = ProcessSpec(name="b", run="/bin/true",
                           user=pwd.getpwuid(os.geteuid()).pw_name)
        pid = spawn.launch(spec, book.slot(spec)).wait()
    finally:
        book.close()
    entries = ledger.read_journal(str(path))
    assert [(name, e["pid"]) for name, e in entries] == [("b", pid)]
    assert isinstance(entries[0][1]["ticks"], int)


def test_http_listen(tmp_path):
    """Off by default; "HOST:PORT" with a port of 1 to 65535; IPv6 in
    brackets."""
    from helpers import master_doc, write_json
    path = str(tmp_path / "master.json")
    write_json(path, master_doc(tmp_path, {}))
    assert config.load_master_config(path).http_listen is None
    for good in ("127.0.0.1:9556", "[::1]:1", "localhost:65535"):
        write_json(path, master_doc(tmp_path, {}, http_listen=good))
        loaded = config.load_master_config(path)
        assert loaded.http_listen == good
    assert config.split_host_port("[::1]:9556") == ("::1", 9556)
    for bad in ("127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", ":80",
                "::1:80", "tcp://127.0.0.1:80", "a b:80", 9556,
                "127.0.0.1:80\n"):
        write_json(path, master_doc(tmp_path, {}, http_listen=bad))
        with pytest.raises(ConfigError) as err:
            config.load_master_config(path)
        assert 'key "http_listen": must be "HOST:PORT"' in str(err.value)


def test_http_listen_off_loopback_is_a_warning_and_env_values_never_shown(
        tmp_path):
    from helpers import master_doc, write_json
    path = str(tmp_path / "master.json")
    write_json(path, master_doc(tmp_path, {}, http_listen="0.0.0.0:9556"))
    assert any('"http_listen": 0.0.0.0:9556 reaches the network' in w
               for w in config.load_master_config(path).warnings)
    write_json(path, master_doc(tmp_path, {}, http_listen="[::1]:9556"))
    assert config.load_master_config(path).warnings == []
    _, problems, _ = problems_of([{"name": "a", "run": "/bin/true",
                                   "env": {"K": "secret-8501\0"}}])
    assert problems and "secret-8501" not in " ".join(problems)


def test_accounts_look_a_user_up_once_until_the_files_change_or_ttl(
        tmp_path, monkeypatch):
    """config.Accounts (a start's user and groups): one lookup while the
    user files stay as they are, within the TTL; again after either; a
    user not found is not kept."""
    calls = []
    real = config.lookup_user

    def counted(user):
        calls.append(user)
        return real(user)
    monkeypatch.setattr(config, "lookup_user", counted)
    files = [tmp_path / "passwd", tmp_path / "group"]
    for path in files:
        path.write_text("x\n")
    now = [100.0]
    accounts = config.Accounts(clock=lambda: now[0])
    accounts.FILES = tuple(str(path) for path in files)
    entry, groups = accounts.lookup("root", groups=True)
    assert entry.pw_uid == 0 and 0 in groups
    assert accounts.lookup("root", groups=True) == (entry, groups)
    assert accounts.lookup("root") == (entry, None)
    assert calls == ["root", "root"]  # with and without groups
    files[1].write_text("x\ny\n")
    accounts.lookup("root", groups=True)
    assert len(calls) == 3
    now[0] += config.Accounts.TTL + 1
    accounts.lookup("root", groups=True)
    assert len(calls) == 4
    for _ in range(2):
        with pytest.raises(KeyError):
            accounts.lookup("no-such-user-dpd")
    assert calls[-2:] == ["no-such-user-dpd"] * 2
