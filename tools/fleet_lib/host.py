"""Machine-wide setup: the fleet user and its password, SSH key generation."""

import os
import pwd
import secrets
import shutil
import subprocess
import warnings

from .common import ETC_DIR, USER, FleetError, flock, write_file

PASSWORD_FILE = os.path.join(ETC_DIR, "password")
RSA_CACHE = os.path.join(ETC_DIR, "client_key_rsa")


def _run(cmd, stdin=None):
    r = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
    if r.returncode != 0:
        raise FleetError(f"{' '.join(cmd[:3])} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def _shadow_hash(user):
    try:
        with open("/etc/shadow") as f:
            for line in f:
                parts = line.split(":")
                if parts[0] == user:
                    return parts[1]
    except OSError:
        pass
    return None


def _password_matches(user, password):
    h = _shadow_hash(user)
    if not h or h.startswith(("!", "*")):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt
        return crypt.crypt(password, h) == h
    except (ImportError, OSError):
        return True  # cannot verify here: trust the stored password


def ensure_user():
    """Create the unprivileged fleet user if missing; return (pwd entry, password).

    The password is generated once per machine and kept root-only in ETC_DIR/password;
    it is (re)set only when the user is created, the file is missing, or /etc/shadow no
    longer matches it, so concurrent fleets all see the same password.
    """
    os.makedirs(ETC_DIR, mode=0o700, exist_ok=True)
    with flock(os.path.join(ETC_DIR, "lock")):
        try:
            pw = pwd.getpwnam(USER)
        except KeyError:
            _run(["useradd", "--create-home", "--shell", "/bin/sh", "--user-group",
                  "--comment", "Guardia test fleet node", USER])
            pw = pwd.getpwnam(USER)
        if pw.pw_shell != "/bin/sh":
            _run(["usermod", "--shell", "/bin/sh", USER])
            pw = pwd.getpwnam(USER)
        if not os.path.isdir(pw.pw_dir):
            os.makedirs(pw.pw_dir, mode=0o750)
            os.chown(pw.pw_dir, pw.pw_uid, pw.pw_gid)
        password = None
        if os.path.exists(PASSWORD_FILE):
            with open(PASSWORD_FILE) as f:
                password = f.read().strip() or None
        if password is None:
            password = secrets.token_urlsafe(18)
            write_file(PASSWORD_FILE, password + "\n", 0o600)
        if not _password_matches(USER, password):
            _run(["chpasswd"], stdin=f"{USER}:{password}\n")
        return pw, password


def keygen_start(path, kind, comment):
    """Start ssh-keygen for a new key at path (no passphrase); returns the Popen."""
    bits = {"ed25519": [], "ecdsa": ["-b", "256"], "rsa": ["-b", "3072"]}[kind]
    for p in (path, path + ".pub"):
        if os.path.exists(p):
            os.unlink(p)
    return subprocess.Popen(["ssh-keygen", "-q", "-t", kind, *bits, "-N", "", "-C", comment, "-f", path],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def keygen_wait(procs):
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise FleetError(f"ssh-keygen failed: {err.decode(errors='replace').strip()}")


def cached_rsa_key(dest):
    """Copy the machine's cached RSA 3072 client key to dest (generating it once: RSA
    generation takes seconds, the other keys milliseconds)."""
    with flock(os.path.join(ETC_DIR, "lock")):
        if not (os.path.exists(RSA_CACHE) and os.path.exists(RSA_CACHE + ".pub")):
            keygen_wait([keygen_start(RSA_CACHE, "rsa", "guardia-fleet-client-rsa")])
    for suffix, mode in (("", 0o600), (".pub", 0o644)):
        shutil.copyfile(RSA_CACHE + suffix, dest + suffix)
        os.chmod(dest + suffix, mode)


def public_key(path):
    """'type base64' of an OpenSSH .pub file (comment dropped)."""
    with open(path + ".pub") as f:
        return " ".join(f.read().split()[:2])
