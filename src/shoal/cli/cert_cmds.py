"""`shoal cert issue SERVICE`: a certificate for a service's mesh names, from the mesh service
CA (an admin command: the key is made here and never sent; the server signs its request)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from shoal.agent.tlscerts import write_bundle
from shoal.cli.server_cmds import UsageError, _with_admin
from shoal.model.api import NAME_PATTERN
from shoal.model.certs import ServiceCertRequest, new_key_and_csr


def cmd_cert_issue(args: argparse.Namespace) -> int:
    if not re.match(NAME_PATTERN, args.service):
        raise UsageError(
            f"service {args.service!r}: a DNS label (a-z, 0-9, '-'; at most 63), as mesh names are"
        )
    out = Path(args.out or args.service)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    key_pem, csr = new_key_and_csr(args.service)
    issued = _with_admin(
        args, lambda c: c.service_cert(ServiceCertRequest(service=args.service, csr=csr))
    )
    write_bundle(out, key_pem, issued)
    print(
        f"certificate for {', '.join(issued.names)} in {out}/ (key.pem, cert.pem, ca.pem), "
        f"valid until {issued.not_after:%Y-%m-%d %H:%M} UTC"
    )
    return 0
