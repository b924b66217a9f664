"""``drimbox demo``: the whole national network on one machine.

The index, the development identity provider, and three sites (each an embedded PACS and
its box), every call between boxes and with the index over mutual TLS with the dev CA, the
boxes trusting each other through a signed whitelist, the professionals' and patients'
tokens checked by introspection. Synthetic histories are published through the real path:
C-STORE into each site's PACS, then the RIS's HL7 ORU over MLLP to its box, which builds
the KOS and the report and submits them to the index.

Each part is its own process (``drimbox idp``, ``index``, ``pacs``, ``box``), logging to
``<data-dir>/logs``; Ctrl-C stops them all. A second start reuses the data folder: same
ports, certificates and published history.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import date
from pathlib import Path
from typing import Any

import httpx

from drimbox.adapters.oidc.people import (
    BUILT_IN,
    PHYSICIAN,
    RADIOLOGY,
    People,
    Professional,
    Structure,
)
from drimbox.adapters.oidc.people import Patient as IdpPatient
from drimbox.entrypoints.demo_network import (
    PASSWORD,
    SITE_IDS,
    DemoSite,
    Network,
    Ports,
    box_config,
    describe,
    idp_config,
    index_config,
    load_secrets,
    make_pki,
    pacs_storage,
)
from drimbox.settings import ConfigError

log = logging.getLogger("drimbox.demo")
STATE = "demo-state.json"


class DemoError(Exception):
    """The demo cannot start; the message says why and where to look."""


def _ohif_dir() -> Path | None:
    """The OHIF build ``scripts/fetch-ohif`` put in place (``DRIMBOX_OHIF_DIR`` or its cache)."""
    configured = os.environ.get("DRIMBOX_OHIF_DIR")
    found = (
        [Path(configured)]
        if configured
        else sorted((Path.home() / ".cache" / "drimbox").glob("ohif-*"), reverse=True)
    )
    return next((f for f in found if (f / "index.html").is_file()), None)


# -- the plan ----------------------------------------------------------------------------------


def _sites(manifest: dict[str, Any], ports: Ports) -> list[DemoSite]:
    out = []
    for sid, record, site_ports in zip(SITE_IDS, manifest["sites"], ports.sites, strict=False):
        doctor = record["radiologists"][0]
        out.append(
            DemoSite(
                sid,
                record["id"],
                record["name"],
                record["finess"],
                record["structure_id"],
                record["oid_root"],
                f"PACS{sid.upper()}",
                {"given": doctor["given"], "family": doctor["family"], "rpps": doctor["rpps"]},
                site_ports,
            )
        )
    if len(out) != 3:
        raise DemoError("the synthetic history must have three sites")
    return out


def _people(net: Network, manifest: dict[str, Any]) -> tuple[People, list[dict[str, Any]]]:
    """The idp's people: a radiologist per site (from the synthetic sites), a general
    practitioner and a secretary, and every synthetic patient; all with the demo password."""
    professionals, users = [], []
    for site in net.sites:
        login = f"radiologue-{site.id}"
        d = site.radiologist
        professionals.append(
            Professional(
                id=login,
                rpps=d["rpps"],
                civility="M",
                given_name=d["given"].title(),
                family_name=d["family"],
                title="Radiologue",
                profession=PHYSICIAN,
                specialty=RADIOLOGY,
                password=PASSWORD,
                structure=Structure(finess=site.finess, name=site.name),
            )
        )
        users.append(
            {
                "login": login,
                "password": PASSWORD,
                "role": "radiologist",
                "site": site.id,
                "name": f"Dr {d['given'].title()} {d['family']}",
            }
        )
    for built_in, role in (("generaliste", "physician"), ("secretaire", "staff")):
        person = BUILT_IN.find(built_in)
        assert isinstance(person, Professional)
        # the secretary works at site B, the general practitioner in town
        structure = (
            person.structure
            if role == "physician"
            else Structure(finess=net.sites[1].finess, name=net.sites[1].name)
        )
        professionals.append(
            person.model_copy(update={"password": PASSWORD, "structure": structure})
        )
        users.append(
            {
                "login": built_in,
                "password": PASSWORD,
                "role": role,
                "site": "b" if role == "staff" else "",
                "name": person.label(),
            }
        )
    patients = []
    for n, p in enumerate(manifest["patients"], 1):
        login = f"patient-{n:02d}"
        given = p["given_names"][0].title()
        family = p["used_family"] or p["birth_family"]
        patients.append(
            IdpPatient(
                id=login,
                given_name=given,
                family_name=family,
                birthdate=date.fromisoformat(p["birth_date"]),
                gender="female" if p["sex"] == "F" else "male",
                ins=p["ins"],
                ins_oid=p["ins_oid"],
                password=PASSWORD,
            )
        )
        users.append(
            {
                "login": login,
                "password": PASSWORD,
                "role": "patient",
                "site": "",
                "ins": p["ins"],
                "name": f"{given} {family}",
            }
        )
    people = People(professionals=professionals, patients=patients)
    folder = net.folder("idp")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "people.json").write_text(people.model_dump_json(indent=1))
    return people, users


# -- the processes -----------------------------------------------------------------------------


class Processes:
    """The network's processes, each in its own session so that Ctrl-C reaches only us and
    we stop them in order (boxes first, the index and the idp last)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, *args: str) -> None:
        with (self.logs / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "drimbox", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.running.append((name, proc))

    def dead(self) -> list[str]:
        return [f"{name} (code {p.returncode})" for name, p in self.running if p.poll() is not None]

    def tail(self, name: str, lines: int = 15) -> str:
        try:
            text = (self.logs / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        for _, proc in reversed(self.running):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for _, proc in reversed(self.running):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            # the process group: the box's Source workers, the PACS's workers
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def memory(self) -> tuple[int, int]:
        """(resident bytes, processes) of every process in our children's sessions."""
        sessions = {p.pid for _, p in self.running}
        total = count = 0
        for pid in _pids():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                session = int(stat.rsplit(")", 1)[1].split()[3])
                if session not in sessions:
                    continue
                status = Path(f"/proc/{pid}/status").read_text()
            except (OSError, ValueError, IndexError):
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    count += 1
        return total, count


def _pids() -> Iterator[int]:
    try:
        names = os.listdir("/proc")
    except OSError:
        return
    yield from (int(n) for n in names if n.isdigit())


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait_ports(procs: Processes, waits: list[tuple[str, str, int]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(waits)
    while pending:
        pending = [(name, host, port) for name, host, port in pending if not _listening(host, port)]
        if not pending:
            return
        dead = procs.dead()
        if dead or time.monotonic() > deadline:
            name = pending[0][0]
            why = f"{', '.join(dead)} stopped" if dead else f"{name} is not listening"
            raise DemoError(f"{why}; last lines of logs/{name}.log:\n{procs.tail(name)}")
        time.sleep(0.2)


def _busy(net: Network) -> list[int]:
    busy = []
    for port in net.ports.all():
        with socket.socket() as s:
            # as the servers do: connections of a previous run in TIME_WAIT do not count
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((net.bind, port))
            except OSError:
                busy.append(port)
    return busy


def start_network(net: Network, procs: Processes, ohif: Path | None) -> None:
    procs.start("idp", "idp", "--config", str(idp_config(net)))
    procs.start("index", "index", "--config", str(index_config(net)))
    for site in net.sites:
        p = site.ports
        procs.start(
            f"pacs-{site.id}",
            "pacs",
            "--aet",
            site.pacs_aet,
            "--host",
            net.bind,
            "--port",
            str(p.pacs),
            "--http-port",
            str(p.pacs_http),
            "--storage",
            str(pacs_storage(net, site)),
            "--workers",
            "1",
        )
    _wait_ports(
        procs, [("idp", net.bind, net.ports.idp), ("index", net.bind, net.ports.index)], timeout=60
    )
    for site in net.sites:
        procs.start(f"box-{site.id}", "box", "--config", str(box_config(net, site, ohif)))
    waits = []
    for site in net.sites:
        p = site.ports
        waits += [
            (f"pacs-{site.id}", net.bind, p.pacs),
            (f"pacs-{site.id}", net.bind, p.pacs_http),
            (f"box-{site.id}", net.bind, p.users),
            (f"box-{site.id}", net.bind, p.source),
            (f"box-{site.id}", net.bind, p.mllp),
        ]
    _wait_ports(procs, waits, timeout=120)


# -- publishing the synthetic history ----------------------------------------------------------


def _send_images(net: Network, sites: list[DemoSite], synth: Path) -> int:
    """The modalities: every image C-STOREd into its site's PACS, the sites side by side,
    one ``drimbox send`` process each (pynetdicom's associations stay apart)."""
    procs = [
        (site, subprocess.Popen(
            [sys.executable, "-m", "drimbox", "send", str(synth / site.synth_id / "dicom"),
             "--host", net.bind, "--port", str(site.ports.pacs), "--aet", site.pacs_aet,
             "--calling-aet", "MODALITY", "--wait", "30"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
        for site in sites
    ]  # fmt: skip
    sent = 0
    for site, proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            first = (err.strip().splitlines() or ["?"])[0]
            raise DemoError(f"site {site.id}: images refused by the PACS ({first})")
        sent += int(out.split()[0]) if out.split() and out.split()[0].isdigit() else 0
    return sent


def _send_reports(net: Network, site: DemoSite, synth: Path, manifest: dict[str, Any]) -> int:
    """The RIS: each validated report (and correction, cancellation) as HL7 ORU, in order."""
    from drimbox.adapters.hl7.mllp import send_message

    messages = sorted(
        (
            m
            for e in manifest["exams"]
            if e["site"] == site.synth_id
            for m in e["hl7_messages"]
            if m["kind"] == "ORU"
        ),
        key=lambda m: (m["sent"], m["control_id"]),
    )
    for m in messages:
        ack = send_message(net.bind, site.ports.mllp, (synth / m["path"]).read_bytes())
        msa = next(
            (s for s in ack.decode("utf-8", "replace").split("\r") if s.startswith("MSA")), ""
        )
        if msa.split("|")[1:2] != ["AA"]:
            raise DemoError(f"site {site.id}: the box refused {m['path']}: {msa}")
    return len(messages)


def _admin_status(
    http: httpx.Client, net: Network, site: DemoSite, headers: dict[str, str]
) -> dict[str, Any]:
    r = http.get(f"{net.url(site.ports.users)}/api/admin/status", headers=headers)
    if r.status_code != 200:
        raise DemoError(f"site {site.id}: the admin API answered {r.status_code}: {r.text[:300]}")
    return dict(r.json())


def _wait_published(net: Network, procs: Processes, timeout: float) -> dict[str, Any]:
    """Until every box has published what it was sent (or held it, with a reason)."""
    from drimbox.entrypoints.dev_token import dev_token

    # as each site's admin, its radiologist: the admin API answers them from any address
    # (with --host a LAN name, we are not a loopback client)
    idp = {"idp": {"issuer": net.issuer}}
    auth = {
        s.id: {
            "Authorization": "Bearer " + dev_token(idp, net.secrets, f"radiologue-{s.id}", PASSWORD)
        }
        for s in net.sites
    }
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=10) as http:
        while True:
            status = {s.id: _admin_status(http, net, s, auth[s.id]) for s in net.sites}
            waiting = sum(
                st["messages"].get("pending", 0) + st["operations"].get("pending", 0)
                for st in status.values()
            )
            if not waiting:
                return status
            if procs.dead():
                raise DemoError(f"{', '.join(procs.dead())} stopped while publishing")
            if time.monotonic() > deadline:
                raise DemoError(
                    f"{waiting} publications still waiting after {timeout:.0f} s; "
                    "see the admin pages and logs/box-*.log"
                )
            time.sleep(0.5)


def publish_history(net: Network, procs: Processes, synth: Path, manifest: dict[str, Any]) -> str:
    started = time.monotonic()
    with ThreadPoolExecutor(len(net.sites)) as pool:
        images = _send_images(net, net.sites, synth)
        reports = sum(pool.map(lambda s: _send_reports(net, s, synth, manifest), net.sites))
    status = _wait_published(net, procs, timeout=max(300.0, reports * 5.0))
    held = sum(len(st["held"]) + len(st["failed"]) for st in status.values())
    note = f", {held} held or failed (see the admin pages)" if held else ""
    return (
        f"{images} images stored in the PACS, {reports} HL7 reports sent, published in "
        f"{time.monotonic() - started:.0f} s{note}"
    )


# -- the command -------------------------------------------------------------------------------


def _state(data_dir: Path) -> dict[str, Any]:
    path = data_dir / STATE
    return dict(json.loads(path.read_text())) if path.is_file() else {}


def _save_json(path: Path, document: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(document, indent=1, ensure_ascii=False))
    tmp.replace(path)


def _reset(data_dir: Path) -> None:
    if not data_dir.exists():
        return
    if not (data_dir / STATE).is_file() and any(data_dir.iterdir()):
        raise DemoError(f"{data_dir} is not a demo folder (no {STATE}): not deleting it")
    shutil.rmtree(data_dir)


def plan(
    data_dir: Path, host: str, base_port: int | None, patients: int, size: str
) -> tuple[Network, dict[str, Any], dict[str, Any]]:
    """The network of ``data_dir`` (made on first start), its synthetic manifest and state."""
    from drimbox.synth import generate_history

    state = _state(data_dir)
    if base_port is None and state:
        ports = Ports.from_json(state["ports"])
    elif base_port == 0:
        ports = Ports.free()
    else:
        ports = Ports.from_base(base_port or 8400)
    if state and state.get("host") != host:
        raise DemoError(f"this demo was made for --host {state.get('host')}; use --reset")
    synth = data_dir / "synth"
    if not (synth / "manifest.json").is_file():
        print(f"Génération de l'historique synthétique ({patients} patients)…", flush=True)
        generate_history(synth, patients, 3, seed=1, size=size, message_type="ORU")  # type: ignore[arg-type]
    manifest = json.loads((synth / "manifest.json").read_text())
    net = Network(data_dir, host, ports)
    net.sites = _sites(manifest, ports)
    net.secrets = load_secrets(data_dir)
    make_pki(net)
    state = {**state, "host": host, "ports": asdict(ports)}
    _save_json(data_dir / STATE, state)
    return net, manifest, state


def _table(net: Network, doc: dict[str, Any], startup: float, memory: tuple[int, int]) -> str:
    lines = [
        "",
        f"drimbox demo : réseau prêt en {startup:.0f} s "
        f"({memory[1]} processus, {memory[0] / 2**20:.0f} Mio en mémoire)",
        "",
        f"  Index national (DMP)    {net.index_url}   (API JSON {net.index_url}/api, mTLS)",
        f"  Identité (PSC de dév.)  {net.issuer}",
    ]
    for site, entry in zip(net.sites, doc["sites"], strict=True):
        lines += [
            "",
            f"  Site {site.id.upper()} — {site.name}",
            f"    Professionnels  {entry['conso_url']}",
            f"    Patients        {entry['patient_url']}",
            f"    Administration  {entry['admin_url']}",
            f"    PACS            {site.pacs_aet}@{net.host}:{site.ports.pacs}   "
            f"DICOMweb {entry['pacs']['dicomweb_url']}",
            f"    RIS (HL7 MLLP)  {net.host}:{site.ports.mllp}",
        ]
    lines += ["", f"  Connexions (mot de passe « {PASSWORD} ») :"]
    for user in doc["users"]:
        if user["role"] == "patient" and user["login"] not in ("patient-01", "patient-02"):
            continue
        where = f", site {user['site'].upper()}" if user.get("site") else ""
        extra = f", INS {user['ins']}" if user.get("ins") else ""
        lines.append(f"    {user['login']:<15} {user['name']} ({user['role']}{where}{extra})")
    lines += [
        f"    … et patient-03 à patient-{len(doc['patients']):02d}",
        "",
        f"  Description pour les scripts : {net.data_dir / 'demo.json'}",
        f"  Journaux : {net.data_dir / 'logs'}     Ctrl-C arrête tout.",
        "",
    ]
    return "\n".join(lines)


def run_demo(
    data_dir: Path, host: str, base_port: int | None, patients: int, size: str, reset: bool
) -> int:
    started = time.monotonic()
    data_dir = data_dir.resolve()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        if reset:
            _reset(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        net, manifest, state = plan(data_dir, host, base_port, patients, size)
    except (DemoError, ValueError, OSError) as exc:
        print(f"drimbox demo: {exc}", file=sys.stderr)
        return 2
    busy = _busy(net)
    if busy:
        print(
            f"drimbox demo: ports already in use: {busy} (another demo running? "
            "--base-port chooses others)",
            file=sys.stderr,
        )
        return 2
    _, users = _people(net, manifest)
    ohif = _ohif_dir()
    procs = Processes(data_dir / "logs")
    try:
        print("Démarrage de l'index, du fournisseur d'identité et des trois sites…", flush=True)
        start_network(net, procs, ohif)
        if not state.get("published"):
            print("Publication de l'historique par le vrai chemin (PACS, HL7, index)…", flush=True)
            print("  " + publish_history(net, procs, data_dir / "synth", manifest), flush=True)
            state["published"] = True
            _save_json(data_dir / STATE, state)
        startup = time.monotonic() - started
        memory = procs.memory()
        patients_doc = [
            {
                "ins": p["ins"],
                "oid": p["ins_oid"],
                "name": f"{p['given_names'][0].title()} {p['used_family'] or p['birth_family']}",
            }
            for p in manifest["patients"]
        ]
        doc = describe(
            net,
            patients_doc,
            users,
            {
                "startup_seconds": round(startup, 1),
                "memory_bytes": memory[0],
                "processes": memory[1],
                "viewer": bool(ohif),
                "pid": os.getpid(),
            },
        )
        _save_json(data_dir / "demo.json", doc)
        print(_table(net, doc, startup, memory), flush=True)
        if ohif is None:
            print("  (visionneuse OHIF absente : ./scripts/fetch-ohif, puis DRIMBOX_OHIF_DIR)")
        while not stop.wait(1.0):
            dead = procs.dead()
            if dead:
                print(
                    f"drimbox demo: {', '.join(dead)} stopped; stopping everything", file=sys.stderr
                )
                return 1
        print("Arrêt…", flush=True)
        return 0
    except (DemoError, ConfigError, OSError, httpx.HTTPError) as exc:
        print(f"drimbox demo: {exc}", file=sys.stderr)
        return 1
    finally:
        (data_dir / "demo.json").unlink(missing_ok=True)
        procs.stop()
