"""A real Ceph radosgw over HTTPS on 127.0.0.1: a throwaway one-node cluster (a monitor, one in-memory OSD, radosgw
with a certificate made for it) started for the test session, about 10 s, and stopped after it.

Needs Debian's `radosgw`, `ceph-mon` and `ceph-osd` packages (`EMILIA_CEPH_TESTS=1 ./scripts/bootstrap.sh` installs
them); without them the tests that use it are skipped, saying so. Unlike moto, radosgw checks signatures, refuses
botocore's default upload checksums over HTTPS and answers errors without a message, as in production.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph", "monmaptool", "ceph-authtool")
KEY_ID = "emilia-radosgw-key"
SECRET = "emilia-radosgw-secret"


@dataclass(frozen=True)
class Radosgw:
    url: str
    ca_file: Path  # the server's self-signed certificate
    access_key_id: str
    secret_access_key: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _conf(d: Path, fsid: str, mon_port: int, rgw_port: int) -> str:
    return f"""[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
mon initial members = a
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc
ms client mode = crc
ms cluster mode = crc
ms service mode = crc
run dir = {d}/run
admin socket = {d}/run/$name.asok
log file = {d}/log/$name.log
pid file = {d}/run/$name.pid
keyring = {d}/keyring
mon data = {d}/mon/$name
osd data = {d}/osd/$name
osd objectstore = memstore
memstore device bytes = 1073741824
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
[client.rgw]
rgw frontends = beast ssl_endpoint=127.0.0.1:{rgw_port} ssl_certificate={d}/cert.pem ssl_private_key={d}/key.pem
rgw data = {d}/rgw
"""


def _tail(d: Path) -> str:
    out = []
    for log in sorted((d / "log").glob("*.log")):
        out.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
    return "\n".join(out)


@pytest.fixture(scope="session")
def radosgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Radosgw]:
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        pytest.skip(f"radosgw tests need Ceph ({', '.join(missing)} not found): "
                    "EMILIA_CEPH_TESTS=1 ./scripts/bootstrap.sh installs radosgw ceph-mon ceph-osd")
    from tests.s3_compat_proxy import make_tls_files

    d = tmp_path_factory.mktemp("ceph")
    for sub in ("run", "log", "mon", "osd/osd.0", "rgw"):
        (d / sub).mkdir(parents=True)
    _, cert, key = make_tls_files(d / "tls")
    ca = d / "tls" / "ca.pem"
    shutil.copy(cert, d / "cert.pem")
    shutil.copy(key, d / "key.pem")
    fsid, mon_port, rgw_port = str(uuid.uuid4()), _free_port(), _free_port()
    conf = d / "ceph.conf"
    conf.write_text(_conf(d, fsid, mon_port, rgw_port))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    daemons: list[subprocess.Popen] = []

    def run(*args: str, timeout: float = 60) -> str:
        proc = subprocess.run([*args, "-c", str(conf)], env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}\n{_tail(d)}")
        return proc.stdout

    def start(*args: str) -> None:
        daemons.append(subprocess.Popen([*args, "-f", "-c", str(conf)], env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL))

    started = time.monotonic()
    try:
        subprocess.run(["ceph-authtool", "--create-keyring", str(d / "keyring"), "--gen-key", "-n", "mon.",
                        "--cap", "mon", "allow *"], check=True, capture_output=True, env=env)
        subprocess.run(["monmaptool", "--create", "--addv", "a", f"[v2:127.0.0.1:{mon_port}]", "--fsid", fsid,
                        str(d / "monmap")], check=True, capture_output=True, env=env)
        run("ceph-mon", "--mkfs", "-i", "a", "--monmap", str(d / "monmap"), "--keyring", str(d / "keyring"))
        start("ceph-mon", "-i", "a")
        osd_id = run("ceph", "--connect-timeout", "30", "osd", "create").strip()
        run("ceph-osd", "-i", osd_id, "--mkfs")
        start("ceph-osd", "-i", osd_id)
        start("radosgw", "-n", "client.rgw")
        # blocks until the cluster serves the zone's pools
        run("radosgw-admin", "user", "create", "--uid=emilia", "--display-name=emilia", f"--access-key={KEY_ID}",
            f"--secret={SECRET}", timeout=120)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", rgw_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or any(p.poll() is not None for p in daemons):
                    raise RuntimeError(f"radosgw did not come up on port {rgw_port}\n{_tail(d)}") from None
                time.sleep(0.2)
        print(f"\nradosgw ready on https://127.0.0.1:{rgw_port} in {time.monotonic() - started:.1f} s")
        yield Radosgw(f"https://127.0.0.1:{rgw_port}", ca, KEY_ID, SECRET)
    finally:
        for proc in reversed(daemons):
            proc.terminate()
        for proc in reversed(daemons):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
