"""CURVE keys: zmq.auth's key files, folders of allowed public keys, and
the sealed bodies that make a node's list readable by that node alone.

A key file is zmq.auth's format (what ``dpdctl keygen`` writes with
``zmq.auth.create_certificates``): ``NAME.key`` holds a public key,
``NAME.key_secret`` the public and the secret key, each a line
``public-key = "<40 Z85 characters>"`` / ``secret-key = "..."``. Both are
read here, bounded and checked like every outside input, and refused with a
ConfigError naming the file.

A folder of allowed keys (the master's ``curve_clients_dir`` and
``curve_operators_dir``) holds one ``NAME.key`` per peer: the node's or the
operator's name is the file's. A file that cannot be used (unreadable,
unsafe, malformed, the same key as another name) is skipped with a warning:
that one peer is refused, the others keep working.

Sealing: PUB sends every topic to every subscriber that asks, so CURVE on
the socket alone would let one allowed node read every node's list (and its
secrets). The master seals each node's messages with a NaCl box (Curve25519,
XSalsa20-Poly1305: PyNaCl) from its secret key to the node's public key —
the same key pairs CURVE uses; only that node can open them, and opening
proves they come from the master.

pyzmq and PyNaCl are imported only when a key is used (the worker, which
reads no key, loads neither).
"""

import dataclasses
import os
import re
import stat
import struct

from diprocd import trust
from diprocd.errors import ConfigError, ProtocolError

MAX_KEY_FILE_BYTES = 64 * 1024
MAX_KEYS_IN_FOLDER = 100000
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
# The Z85 alphabet (ZeroMQ RFC 32); a 32-byte key is 40 characters.
_Z85_LINE = re.compile(
    rb'^\s*(public-key|secret-key)\s*=\s*["\']?'
    rb'([0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40})["\']?\s*$')


@dataclasses.dataclass(frozen=True)
class KeyPair:
    """Z85 text (bytes) of a public key and, from a secret file, its secret."""
    public: bytes
    secret: bytes = None


def _check_safe(fd, path, what, secret, checked_folder=None):
    """The file-safety rules (``trust``): a key file or folder someone else
    could write is refused; a secret key readable by others too. ``fd``:
    the open file (checked by fstat), or None (by path: a folder);
    ``checked_folder``: as ``trust.check_opened``'s."""
    what += " secret key file" if secret else " key file" if path.endswith(
        PUBLIC_SUFFIX) else ""
    if fd is None:
        trust.check_file(path, what, secret)
    else:
        trust.check_opened(fd, path, what, secret,
                           checked_folder=checked_folder)


def read_key_file(path, what, secret=False, checked_folder=None):
    """The KeyPair in ``path``; ``secret``: it must hold the secret key.
    Raise ConfigError naming the file and what is wrong. ``checked_folder``:
    the real path of its folder, already checked (``read_keyring``)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise ConfigError("%s %s: cannot read: %s" % (
            what, path, err.strerror or err))
    # The file checked is the file read (fstat of this descriptor).
    try:
        _check_safe(fd, path, what, secret, checked_folder)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError("%s %s: not a regular file" % (what, path))
        with os.fdopen(fd, "rb") as handle:
            fd = None
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as err:
        raise ConfigError("%s %s: cannot read: %s" % (
            what, path, err.strerror or err))
    finally:
        if fd is not None:
            os.close(fd)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ConfigError("%s %s: larger than %d bytes: not a key file" % (
            what, path, MAX_KEY_FILE_BYTES))
    found = {}
    for line in data.splitlines():
        match = _Z85_LINE.match(line)
        if match:
            found.setdefault(match.group(1), match.group(2))
    if b"public-key" not in found:
        raise ConfigError('%s %s: no public-key = "<40 Z85 characters>" line '
                          "(a zmq.auth key file, as dpdctl keygen writes)"
                          % (what, path))
    if secret and b"secret-key" not in found:
        raise ConfigError("%s %s: no secret-key line: this is a public key "
                          "file (the secret one is NAME%s)" % (
                              what, path, SECRET_SUFFIX))
    pair = KeyPair(found[b"public-key"], found.get(b"secret-key"))
    for name, key in (("public", pair.public), ("secret", pair.secret)):
        try:
            key is None or raw(key)
        except (ValueError, struct.error):
            raise ConfigError("%s %s: its %s key is not a Z85 key (a group "
                              "of five characters is past 2**32)" % (
                                  what, path, name))
    if pair.secret is not None and public_of(pair.secret) != pair.public:
        raise ConfigError("%s %s: its public key does not belong to its "
                          "secret key" % (what, path))
    return pair


def public_of(secret_z85):
    """The Z85 public key of a Z85 secret key."""
    import zmq  # only with CURVE
    return zmq.curve_public(secret_z85)


def raw(key_z85):
    """32 raw bytes of a Z85 key (what NaCl takes)."""
    from zmq.utils import z85  # only with CURVE
    return z85.decode(key_z85)


@dataclasses.dataclass(frozen=True)
class Keyring:
    """The public keys in one folder, by name (the file's, less ".key")."""
    folder: str
    keys: dict  # name -> Z85 public key (bytes)
    names: dict  # Z85 public key (text, as ZAP's User-Id) -> name

    def name_of(self, user_id):
        """The name of a peer from its ZAP User-Id (its Z85 key), or None."""
        return self.names.get(user_id)

    def __contains__(self, key_z85):
        return key_z85.decode("ascii") in self.names


def read_keyring(folder, what):
    """The Keyring of ``folder`` and the warnings about the files skipped;
    ConfigError when the folder itself cannot be read."""
    _check_safe(None, folder, what + " folder", False)
    # Checked with its folders: each file then alone (thousands of nodes).
    real_folder = os.path.realpath(folder)
    try:
        entries = sorted(os.listdir(folder))
    except OSError as err:
        raise ConfigError("%s folder %s: cannot read: %s" % (
            what, folder, err.strerror or err))
    keys, warnings = {}, []
    for entry in entries[:MAX_KEYS_IN_FOLDER]:
        if not entry.endswith(PUBLIC_SUFFIX) or entry.startswith("."):
            continue
        name = entry[:-len(PUBLIC_SUFFIX)]
        try:
            keys[name] = read_key_file(os.path.join(folder, entry),
                                       what, checked_folder=real_folder).public
        except ConfigError as err:
            warnings.append("%s (skipped: that one is refused)"
                            % "; ".join(err.problems))
    by_key = {}
    for name, key in keys.items():
        by_key.setdefault(key, []).append(name)
    for key, names in by_key.items():
        if len(names) > 1:
            warnings.append("%s folder %s: %s hold the same key: all of them "
                            "are refused" % (what, folder, ", ".join(
                                n + PUBLIC_SUFFIX for n in names)))
            for name in names:
                del keys[name]
    return Keyring(folder, keys, {key.decode("ascii"): name
                                  for name, key in keys.items()}), warnings


class Sealer:
    """The master's side: a body sealed for one node's public key."""

    def __init__(self, secret_z85):
        from nacl.public import PrivateKey  # only with CURVE
        self._secret = PrivateKey(raw(secret_z85))
        self._boxes = {}

    def seal(self, public_z85, body):
        box = self._boxes.get(public_z85)
        if box is None:
            from nacl.public import Box, PublicKey
            box = self._boxes[public_z85] = Box(self._secret,
                                                PublicKey(raw(public_z85)))
        return bytes(box.encrypt(bytes(body)))


class Opener:
    """A node's side: open what the master sealed for it."""

    def __init__(self, secret_z85, master_public_z85):
        from nacl.public import Box, PrivateKey, PublicKey
        self._box = Box(PrivateKey(raw(secret_z85)),
                        PublicKey(raw(master_public_z85)))

    def open(self, sealed):
        from nacl.exceptions import CryptoError
        try:
            return self._box.decrypt(bytes(sealed))
        except (CryptoError, ValueError, TypeError):
            raise ProtocolError("a sealed body that this node's key cannot "
                                "open (sealed for another node, or not by "
                                "our master)")


# -- what the daemons' files say ------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MasterCurve:
    """The master's CURVE set-up: its key pair, the nodes' keys and the
    operators' keys (dpdctl over tcp), each from the files named."""
    secret_key_file: str
    pair: KeyPair
    clients: Keyring
    operators: Keyring = None


@dataclasses.dataclass(frozen=True)
class ClientCurve:
    """A client's CURVE set-up: its key pair and its master's public key."""
    secret_key_file: str
    pair: KeyPair
    master_key_file: str
    master_public: bytes


def _read_or_problem(problems, reader, *args):
    try:
        return reader(*args)
    except ConfigError as err:
        problems.extend(err.problems)
        return None


def master_curve(where, secret_key_file, clients_dir, operators_dir):
    """(MasterCurve or None, problems, warnings) from the master file's
    "curve_*" keys; None when it sets none of them."""
    if not (secret_key_file or clients_dir or operators_dir):
        return None, [], []
    problems, warnings = [], []
    if not (secret_key_file and clients_dir):
        return None, ['%s: CURVE needs both "curve_secret_key" and '
                      '"curve_clients_dir"' % where], []
    pair = _read_or_problem(problems, read_key_file, secret_key_file,
                            '"curve_secret_key"', True)
    rings = []
    for folder, what in ((clients_dir, '"curve_clients_dir"'),
                         (operators_dir, '"curve_operators_dir"')):
        found = folder and _read_or_problem(problems, read_keyring, folder,
                                            what)
        if found:
            rings.append(found[0])
            warnings += found[1]
        else:
            rings.append(None)
    if problems:
        return None, problems, warnings
    return MasterCurve(secret_key_file, pair, rings[0], rings[1]), [], warnings


def client_curve(where, secret_key_file, master_key_file):
    """(ClientCurve or None, problems) from the client file's keys."""
    if not (secret_key_file or master_key_file):
        return None, []
    if not (secret_key_file and master_key_file):
        return None, ['%s: CURVE needs both "curve_secret_key" and '
                      '"curve_master_key"' % where]
    problems = []
    pair = _read_or_problem(problems, read_key_file, secret_key_file,
                            '"curve_secret_key"', True)
    master = _read_or_problem(problems, read_key_file, master_key_file,
                              '"curve_master_key"')
    if problems:
        return None, problems
    return ClientCurve(secret_key_file, pair, master_key_file,
                       master.public), []


def apply_to_socket(sock, zmq, pair, server_key=None, domain=None):
    """Make ``sock`` a CURVE server (``domain``: its ZAP domain) or, given
    ``server_key``, a CURVE client of that server."""
    sock.curve_secretkey = pair.secret
    sock.curve_publickey = pair.public
    if server_key is not None:
        sock.curve_serverkey = server_key
    else:
        sock.curve_server = True
        sock.zap_domain = domain.encode("ascii")
