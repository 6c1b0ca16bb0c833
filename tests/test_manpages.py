"""The man pages against the code: every option of the argparse parsers
(diprocd.cli, diprocd.ctl) tagged under OPTIONS (dpdctl's verbs' under
VERBS), every key of the configuration tables (diprocd.config) under
CONFIGURATION, every exit code the commands return under EXIT STATUS,
every signal the daemons handle under SIGNALS, the files the code names
(defaults, /etc/default/diprocd, the files beside the pid files, the
schemas the package installs) under FILES; and each page renders with
groff and man without a warning."""

import argparse
import ast
import json
import os
import re
import shutil
import subprocess

import pytest

from diprocd import cli, config, ctl, dpdexec, ledger, paths
from diprocd.control import control_path
from diprocd.master import nodes_file_path
from helpers import ROOT

DAEMONS = sorted(cli.COMMANDS)
PAGES = DAEMONS + ["dpdctl"]
KEYS = {"dpd-workerd": config.WORKER_KEYS, "dpd-masterd": config.MASTER_KEYS,
        "dpd-clientd": config.CLIENT_KEYS}
MODULE_OF = {"dpd-workerd": "worker", "dpd-masterd": "master",
             "dpd-clientd": "client"}
EXAMPLE_OF = {"dpd-workerd": "worker", "dpd-masterd": "master",
              "dpd-clientd": "client"}


# --- reading a page ---------------------------------------------------------------

def page(name):
    with open(os.path.join(ROOT, "man", name + ".8")) as handle:
        return handle.read()


def sections(name):
    """{SECTION NAME: its source lines}."""
    found, current = {}, None
    for line in page(name).splitlines():
        if line.startswith(".SH "):
            current = line[4:].strip().strip('"')
            found[current] = []
        elif current is not None:
            found[current].append(line)
    return found


def plain(text):
    """Source text without groff's escapes: what a reader sees of it."""
    text = re.sub(r"\\f[BIRP]|\\f\(..|\\&|\\\"", "", text)
    return text.replace("\\-", "-").replace("\\ ", " ").replace("\\e", "\\")


def macro_text(line):
    """The text of a line: a macro's arguments joined as it sets them
    (``.BR \\-f ", " \\-\\-foreground`` -> ``-f, --foreground``), or the
    line itself."""
    if line.startswith("."):
        name, _, rest = line[1:].partition(" ")
        words = [a if a is not None and a != "" else b for a, b in
                 re.findall(r'"([^"]*)"|(\S+)', rest)]
        if name in ("B", "I", "SM", "SB"):
            return plain(" ".join(words))
        if name in ("BR", "RB", "BI", "IB", "IR", "RI"):
            return plain("".join(words))
        return ""
    return plain(line)


def tags(lines):
    """The tag lines of the .TP (and .TQ) paragraphs of ``lines``, as text."""
    return [macro_text(lines[i + 1]) for i, line in enumerate(lines[:-1])
            if line.strip() in (".TP", ".TQ")]


def bold(lines):
    """Every word set in bold in ``lines``."""
    found = set()
    for line in lines:
        for match in re.findall(r"\\fB(.*?)\\f[RPI]", line):
            found.add(plain(match))
        if line.startswith("."):
            name, _, rest = line[1:].partition(" ")
            words = [a or b for a, b in re.findall(r'"([^"]*)"|(\S+)', rest)]
            if name == "B":
                found.update(plain(w) for w in words)
            elif name in ("BR", "BI"):
                found.update(plain(w) for w in words[0::2])
            elif name in ("RB", "IB"):
                found.update(plain(w) for w in words[1::2])
    return {word.strip(" ,.;:()") for word in found}


def entries(lines):
    """[(tag, body lines)] of the .TP paragraphs of ``lines``."""
    found, body = [], None
    for i, line in enumerate(lines):
        if line.strip() == ".TP" and i + 1 < len(lines):
            body = []
            found.append((macro_text(lines[i + 1]), body))
        elif line.startswith(".SH") or line.strip() in (".PP", ".P", ".LP"):
            body = None
        elif body is not None:
            body.append(line)
    return found


def words(text):
    return set(re.split(r"[\s,|\[\]=]+", text))


# --- what the code says ------------------------------------------------------------

def options(parser):
    """Every option string of ``parser`` (not its subcommands')."""
    return [option for action in parser._actions
            for option in action.option_strings]


def verbs(parser):
    (action,) = [a for a in parser._actions
                 if isinstance(a, argparse._SubParsersAction)]
    return action.choices


def exit_codes(module, function=None):
    """The exit codes the ``return`` statements of ``module`` (of its
    ``function`` only, when given) give: int constants, the module's
    EXIT_* constants, the branches of a conditional expression."""
    with open(module.__file__) as handle:
        tree = ast.parse(handle.read())
    if function is not None:
        tree = next(node for node in ast.walk(tree)
                    if isinstance(node, ast.FunctionDef)
                    and node.name == function)
    codes = set()

    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            codes.add(node.value)
        elif isinstance(node, ast.Name) and node.id.startswith("EXIT_"):
            codes.add(getattr(module, node.id))
        elif isinstance(node, ast.IfExp):
            value(node.body)
            value(node.orelse)
    for node in ast.walk(tree):
        if isinstance(node, ast.Return) and node.value is not None:
            value(node.value)
    return codes


def handled_signals(module):
    """The names of the signals ``module`` gives ``loop.handle_signals``."""
    with open(module.__file__) as handle:
        tree = ast.parse(handle.read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(
                node.func, "attr", None) == "handle_signals":
            for key in node.args[0].keys:
                names.add(key.attr)
    assert names, module
    return names


def example(kind):
    with open(os.path.join(ROOT, "examples", "diprocd-%s.example.json"
                           % kind)) as handle:
        return json.load(handle)


def schema_files():
    """{kind: where the package installs its schema}, from debian/*.install."""
    with open(os.path.join(ROOT, "debian", "diprocd.install")) as handle:
        (line,) = [l for l in handle if l.startswith("schema/")]
    pattern, folder = line.split()
    names = sorted(os.listdir(os.path.join(ROOT, "schema")))
    assert names, pattern
    return {name.split("-")[1].split(".")[0]: "/" + folder.strip("/") + "/" + name
            for name in names if re.fullmatch(
                pattern.split("/")[-1].replace(".", r"\.").replace("*", ".*"),
                name)}


# --- the tests --------------------------------------------------------------------

@pytest.mark.parametrize("command", DAEMONS)
def test_every_option_of_a_daemon_is_tagged_under_options(command):
    description, _, _, is_worker = cli.COMMANDS[command]
    parser = cli.make_parser(command, description, worker=is_worker)
    tagged = set().union(*map(words, tags(sections(command)["OPTIONS"])))
    missing = [o for o in options(parser) if o not in tagged]
    assert not missing, "%s.8 OPTIONS lacks %s" % (command, missing)
    # Each option but -h and --version in the synopsis, one of its names.
    synopsis = set().union(*(words(macro_text(line)) for line in
                             sections(command)["SYNOPSIS"]))
    assert [a.option_strings for a in parser._actions if a.option_strings
            and a.dest not in ("help", "version")
            and not synopsis & set(a.option_strings)] == []


def test_every_option_and_verb_of_dpdctl_is_documented():
    parser = ctl.make_parser()
    found = sections("dpdctl")
    tagged = set().union(*map(words, tags(found["OPTIONS"])))
    missing = [o for o in options(parser) if o not in tagged]
    assert not missing, "dpdctl.8 OPTIONS lacks %s" % missing
    documented = {}
    for tag, body in entries(found["VERBS"]):
        documented[tag.split()[0]] = words(tag) | words(
            " ".join(map(macro_text, body)))
    for verb, sub in verbs(parser).items():
        assert verb in documented, "dpdctl.8 VERBS lacks %s" % verb
        missing = [o for o in options(sub) if o not in documented[verb]
                   and o not in ("-h", "--help")]
        assert not missing, "dpdctl.8 VERBS %s lacks %s" % (verb, missing)


@pytest.mark.parametrize("command", DAEMONS)
def test_every_config_key_is_in_configuration(command):
    found = bold(sections(command)["CONFIGURATION"])
    missing = sorted(set(KEYS[command]) - found)
    assert not missing, "%s.8 CONFIGURATION lacks %s" % (command, missing)


def test_every_process_field_is_in_the_workers_page():
    found = set(tags(sections("dpd-workerd")["CONFIGURATION"]))
    assert sorted(set(config.PROC_FIELDS) - found) == []


@pytest.mark.parametrize("command", PAGES)
def test_every_exit_code_is_in_exit_status(command):
    if command == "dpdctl":
        codes = exit_codes(ctl) | {ctl.EXIT_USAGE}
    else:
        module = __import__("diprocd." + MODULE_OF[command],
                            fromlist=["run"])
        codes = exit_codes(cli) | exit_codes(module, "run") | {2}  # argparse
        if command == "dpd-workerd":
            from diprocd import status
            codes |= exit_codes(status)
    text = plain("\n".join(sections(command)["EXIT STATUS"]))
    found = {int(n) for n in re.findall(r"(?<![\w.-])(\d+)(?![\w.])", text)}
    assert sorted(codes - found) == [], text
    assert {0, 1, 2} <= codes


@pytest.mark.parametrize("command", DAEMONS)
def test_every_handled_signal_is_in_signals(command):
    module = __import__("diprocd." + MODULE_OF[command], fromlist=["x"])
    tagged = set().union(*map(words, tags(sections(command)["SIGNALS"])))
    assert sorted(handled_signals(module) - tagged) == []


@pytest.mark.parametrize("command", DAEMONS)
def test_files_and_environment(command):
    found = sections(command)
    files = set().union(*map(words, tags(found["FILES"])))
    place = paths.DEFAULTS[command]
    kind = EXAMPLE_OF[command]
    expected = {place.default, paths.DEFAULTS_FILE, schema_files()[kind],
                "/usr/share/doc/diprocd/diprocd-%s.example.json" % kind,
                "/etc/init.d/" + command,
                "/lib/systemd/system/%s.service" % command}
    pid_file = example(kind)["pid_file"]
    if command == "dpd-workerd":
        expected |= {ledger.status_path(pid_file),
                     ledger.journal_path(pid_file), control_path(pid_file),
                     pid_file, paths.OLD_WORKER_CONFIG,
                     os.path.join("/usr/lib/diprocd", dpdexec.NAME)}
    if command == "dpd-masterd":
        expected |= {nodes_file_path(pid_file), pid_file,
                     config.default_master_control(pid_file)[len("ipc://"):]}
    if command == "dpd-clientd":
        expected |= {pid_file}
    missing = sorted(expected - files)
    assert not missing, "%s.8 FILES lacks %s" % (command, missing)
    variables = set().union(*map(words, tags(found["ENVIRONMENT"])))
    assert place.env in variables
    if command == "dpd-workerd":
        assert dpdexec.ENV_VAR in variables


def test_dpdctl_files_and_environment():
    found = sections("dpdctl")
    files = set().union(*map(words, tags(found["FILES"])))
    assert {paths.DEFAULTS["dpd-masterd"].default,
            paths.DEFAULTS["dpd-workerd"].default, paths.DEFAULTS_FILE} <= files
    assert paths.DEFAULTS["dpd-masterd"].env in set().union(
        *map(words, tags(found["ENVIRONMENT"])))


def test_the_nodes_file_is_described():
    """Its name, and what it holds (the master's view of every node)."""
    entry = [body for tag, body in entries(sections("dpd-masterd")["FILES"])
             if nodes_file_path(example("master")["pid_file"]) in tag]
    assert entry, "no FILES entry for the nodes file"
    text = plain(" ".join(entry[0]))
    for word in ("node", "status", "seen"):
        assert word in text, text


@pytest.mark.skipif(not shutil.which("groff"), reason="needs groff "
                    "(groff-base, tests/setup-system.sh)")
@pytest.mark.parametrize("name", PAGES)
def test_page_renders_without_warnings(name):
    path = os.path.join(ROOT, "man", name + ".8")
    result = subprocess.run(["groff", "-man", "-Tutf8", "-ww", path],
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    # A request run into the text before it shows as text.
    shown = re.sub(r".\x08", "", result.stdout)
    assert not re.search(r"\.(TP|TQ|PP|SH|BR|IR|RB|RI|IB|BI)\b", shown), \
        re.findall(r".{30}\.(?:TP|TQ|PP|SH|BR|IR|RB|RI)\b", shown)
    if shutil.which("man"):
        result = subprocess.run(["man", "--warnings", "-l", path],
                                capture_output=True, text=True, timeout=60,
                                env=dict(os.environ, MANPAGER="cat",
                                         MANWIDTH="80"))
        assert (result.returncode, result.stderr) == (0, ""), result.stderr
