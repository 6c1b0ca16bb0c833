"""The generated files (JSON Schemas, the README's and the man page's field
tables) are what the generator writes, and the schemas say what the
validator says."""

import json
import os
import shutil
import subprocess
import sys

import jsonschema
import pytest

from diprocd import config, schema, spec
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
    assert master["heartbeat"]["default"] == 3
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
