"""Throw-away TLS certificates and SuperNode keys for trying a deployment on one machine (and for the tests).

  python -m fedjax_med.deploy.certificates DIR [--sites 2]

writes ``DIR/ca.crt`` (a self-signed CA), ``DIR/server.pem`` + ``DIR/server.key`` (signed by it, valid for
127.0.0.1 and localhost) and, per site K, ``DIR/site_K`` (OpenSSH ECDSA private key) + ``DIR/keys/site_K.pub``.
The private keys (``server.key``, ``site_K``) are created mode 0600.
A real deployment uses certificates from the hospitals' own PKI; these expire after ``days`` days.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(common: str) -> x509.Name:
  return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write(path: str, data: bytes, private: bool = False) -> None:
  """Writes ``data`` to ``path``; a private key is created mode 0600 (never readable by others, not even briefly).

  The key goes to a new file opened with ``O_EXCL`` and mode 0600 in the same directory, then replaces ``path``:
  the permissions hold from the first byte, and an older ``path`` with wider permissions does not keep them.
  """
  directory = os.path.dirname(path) or "."
  os.makedirs(directory, exist_ok=True)
  if not private:
    with open(path, "wb") as f:
      f.write(data)
    return
  temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
  fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise


def make_tls(directory: str, days: int = 2) -> dict[str, str]:
  """A CA and a server certificate for 127.0.0.1 / localhost; returns the three paths."""
  now = datetime.datetime.now(datetime.UTC)
  ca_key = ec.generate_private_key(ec.SECP384R1())
  ca = (x509.CertificateBuilder().subject_name(_name("fedjax_med test CA")).issuer_name(_name("fedjax_med test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256()))
  key = ec.generate_private_key(ec.SECP384R1())
  names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
  cert = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca.subject)
          .public_key(key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.SubjectAlternativeName(names), critical=False)
          .sign(ca_key, hashes.SHA256()))
  paths = {"ca": os.path.join(directory, "ca.crt"), "cert": os.path.join(directory, "server.pem"),
           "key": os.path.join(directory, "server.key")}
  _write(paths["ca"], ca.public_bytes(serialization.Encoding.PEM))
  _write(paths["cert"], cert.public_bytes(serialization.Encoding.PEM))
  _write(paths["key"], key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                         serialization.NoEncryption()), private=True)
  return paths


def make_site_key(directory: str, name: str, public_dir: str | None = None) -> tuple[str, str]:
  """An ECDSA key pair in OpenSSH format (what Flower's SuperNode authentication reads); returns the paths."""
  key = ec.generate_private_key(ec.SECP384R1())
  private = os.path.join(directory, name)
  public = os.path.join(public_dir or os.path.join(directory, "keys"), name + ".pub")
  _write(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption()), private=True)
  _write(public, key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
  return private, public


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("directory")
  parser.add_argument("--sites", type=int, default=2)
  args = parser.parse_args(argv)
  make_tls(args.directory)
  for k in range(args.sites):
    make_site_key(args.directory, f"site_{k}")
  print(f"wrote {args.directory}/ca.crt, server.pem, server.key, site_0..site_{args.sites - 1}, keys/*.pub")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
