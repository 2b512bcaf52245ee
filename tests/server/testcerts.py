"""Test certificates made by openssl (EC P-256): a CA, certificates it signs for servers or
clients, and an atomic file replacement (how cert-manager and Secret volumes rotate files)."""

import os
import subprocess
from pathlib import Path


def openssl(*args):
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def make_ca(folder, name):
    """FOLDER/NAME.key and FOLDER/NAME.crt, a self-signed CA."""
    key, crt = Path(folder) / f"{name}.key", Path(folder) / f"{name}.crt"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", crt, "-days", 2, "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return key, crt


def make_cert(folder, name, ca, usage, san=None):
    """A key and certificate signed by the CA `ca` (its name in `folder`); usage serverAuth or
    clientAuth; san e.g. "DNS:localhost,IP:127.0.0.1"."""
    folder = Path(folder)
    key, csr, crt = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.crt"
    ext = folder / f"{name}.ext"
    ext.write_text(f"extendedKeyUsage={usage}\n" + (f"subjectAltName={san}\n" if san else ""))
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
    openssl("x509", "-req", "-in", csr, "-CA", folder / f"{ca}.crt", "-CAkey", folder / f"{ca}.key",
            "-CAcreateserial", "-out", crt, "-days", 2, "-extfile", ext)
    return key, crt


def read(path):
    return Path(path).read_bytes()


def replace(path, data):
    """Writes `data` to a new file and renames it over `path`."""
    tmp = Path(str(path) + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)
