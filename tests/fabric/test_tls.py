"""fm-controller on TCP beyond loopback only with mutual TLS: a client with a certificate from the
configured CA gets answers, one without a certificate is refused."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest
from fabric_harness import ControllerProcess, FakeFabricManager

from guestinit.fabric import fmctl


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


def _certificates(d: Path) -> None:
    _openssl(
        "req",
        "-x509",
        *EC,
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        cwd=d,
    )
    for name in ("server", "client"):
        _openssl("req", *EC, "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        ext = d / f"{name}.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        sign = ["-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2", "-extfile", ext.name]
        _openssl("x509", "-req", "-in", f"{name}.csr", *sign, "-out", f"{name}.pem", cwd=d)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make test certificates")
def test_mutual_tls(
    fakes: tuple[Path, Path], fm: FakeFabricManager, tmp_path: Path, unused_port: int
) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    _certificates(certs)
    tls = [
        "--tls-cert",
        str(certs / "server.pem"),
        "--tls-key",
        str(certs / "server.key"),
        "--tls-ca",
        str(certs / "ca.pem"),
    ]
    ctl = ControllerProcess(
        fakes[0], tmp_path / "ctl", fm.address, "--listen", f"tcp:127.0.0.1:{unused_port}", *tls
    )
    ctl.start()
    try:
        out, err = io.StringIO(), io.StringIO()
        client = [
            "--tls-cert",
            str(certs / "client.pem"),
            "--tls-key",
            str(certs / "client.key"),
            "--tls-ca",
            str(certs / "ca.pem"),
        ]
        code = fmctl.main(["--address", f"tcp:127.0.0.1:{unused_port}", *client, "activate", "4"], out, err)
        assert (code, out.getvalue()) == (0, "partition 4 activated\n"), err.getvalue()
        out, err = io.StringIO(), io.StringIO()
        code = fmctl.main(
            ["--address", f"tcp:127.0.0.1:{unused_port}", "--tls-ca", str(certs / "ca.pem"), "list"], out, err
        )
        assert code == fmctl.EXIT_CODES["UNAVAILABLE"] and out.getvalue() == ""
        out, err = io.StringIO(), io.StringIO()
        code = fmctl.main(["--address", f"tcp:127.0.0.1:{unused_port}", "--timeout", "5", "list"], out, err)
        assert code != 0  # plaintext against a TLS port
    finally:
        ctl.stop()
    assert fm.active() == [4]
