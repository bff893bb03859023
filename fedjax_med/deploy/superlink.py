"""Flower's SuperLink with its admin APIs closed to everyone but the operator.

  python -m fedjax_med.deploy.superlink [--admin_hosts 127.0.0.1,::1] -- FLOWER-SUPERLINK-ARGS...

flwr 1.42 serves its Fleet API (the sites), its Control API (``flwr`` CLI: register keys, start and stop runs, list
nodes) and its Runtime API (the ServerApp process) on one HTTP port, ``--host``/``--port``
(``flwr/superlink/cli/flower_superlink.py``: ``_run_superlink_http_api``, one ``uvicorn.run`` of the app of
``flwr/superlink/main.py``: ``create_app``). The Control API can be neither moved to another address (its
``--control-api-address`` is deprecated and only used by a legacy gRPC server that starts when
``FLWR_INTERNAL_GRPC_CONTROL_API=1``) nor authenticated outside Flower's enterprise edition
(``load_control_authn_plugin`` in ``flwr/superlink/config_loader.py`` returns ``NoOpControlAuthnPlugin`` unless
``FLWR_OIDC_ENABLED=1`` with ``flwr.ee`` installed). The Runtime API checks no secret in ``subprocess`` isolation
either (``authenticate_superexec_request`` in ``flwr/supercore/dependencies/superexec.py`` returns when no secret
is configured). So anyone who reaches the port could register a key of their own and join, list nodes, start or
stop runs, or call the API the ServerApp uses.

This launcher runs Flower's own ``flower-superlink`` entry point, with one ASGI middleware put in front of the app
``create_app`` returns: a request from a peer address outside ``admin_hosts`` may use only ``/v1/fleet/...`` (what a
SuperNode calls); anything else gets HTTP 403 and is logged. It prints :data:`GUARD_LINE` when installed, and
``deploy.flower`` refuses to go on without that line (it fails closed if a Flower version stops calling
``create_app``). ``flwr==1.42.0`` is pinned in the ``flower`` extra.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Iterable

GUARD_LINE = "fedjax_med: only the Fleet API is open to peers other than"
FLEET_PREFIX = "/v1/fleet/"
LOOPBACK = ("127.0.0.1", "::1")


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
  try:
    address = ipaddress.ip_address(text.strip().strip("[]"))
  except ValueError:
    return None
  if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
    return address.ipv4_mapped  # a dual-stack socket shows IPv4 peers as ::ffff:a.b.c.d
  return address


def fleet_only_path(path: str) -> bool:
  """A path a SuperNode may call: under ``/v1/fleet/``, without ``..`` or empty segments."""
  return path.startswith(FLEET_PREFIX) and ".." not in path and "//" not in path and "\\" not in path


class AdminFromOperatorOnly:
  """ASGI middleware: peers outside ``admins`` may use the Fleet API only (HTTP 403 for the rest, logged)."""

  def __init__(self, app, admins: Iterable[str]):
    self.app = app
    self.admins = frozenset(a for a in (_address(x) for x in admins) if a is not None)

  def allowed(self, peer: str | None, path: str) -> bool:
    address = _address(peer) if peer else None
    return (address is not None and address in self.admins) or fleet_only_path(path)

  async def __call__(self, scope, receive, send):
    if scope["type"] in ("http", "websocket"):
      peer = (scope.get("client") or (None, 0))[0]
      if not self.allowed(peer, scope.get("path", "")):
        print(f"fedjax_med: refused {scope.get('method', scope['type'])} {scope.get('path', '')} from {peer}: "
              "the SuperLink's Control and Runtime APIs are the operator's", file=sys.stderr, flush=True)
        if scope["type"] == "websocket":
          await send({"type": "websocket.close", "code": 1008})
          return
        body = b"forbidden: only the Fleet API is open to this address\n"
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        return
    await self.app(scope, receive, send)


def install(admins: Iterable[str]) -> None:
  """Makes Flower's ``create_app`` return its app behind :class:`AdminFromOperatorOnly`."""
  import flwr.superlink.main as link_main

  admins = tuple(admins)
  original = link_main.create_app

  def create_app(*args, **kwargs):
    app = original(*args, **kwargs)
    app.add_middleware(AdminFromOperatorOnly, admins=admins)
    print(f"{GUARD_LINE} {', '.join(admins)}", flush=True)
    return app

  link_main.create_app = create_app


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  ours, rest = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else ([], argv)
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--admin_hosts", default=",".join(LOOPBACK),
                      help="comma-separated peer addresses that may use the Control and Runtime APIs")
  args = parser.parse_args(ours)
  admins = [a.strip() for a in args.admin_hosts.split(",") if a.strip()]
  bad = [a for a in admins if _address(a) is None]
  if bad or not admins:
    parser.error(f"--admin_hosts: not IP addresses: {bad or admins}")
  install(admins)
  from flwr.superlink.cli import flower_superlink

  sys.argv = ["flower-superlink", *rest]
  flower_superlink()
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
