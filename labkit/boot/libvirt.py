"""What libvirt holds for a lab, found by name: every domain, volume and network a lab makes is
named after the lab (or its copy) and its node or network, as boot/names.py builds them, so a lab
can be removed, and strays found, without Vagrant's `.vagrant/` state. Every call names the
libvirt it asks: this host's, or another through qemu+ssh://."""

from __future__ import annotations

import re
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Network

from labkit.boot import names
from labkit.errors import LabkitError
from labkit.labfile import Lab

LOCAL = "qemu:///system"
POOL = "default"


@dataclass
class Objects:
    domains: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.domains or self.volumes or self.networks)

    def names(self) -> list[str]:
        return self.domains + self.volumes + self.networks


def is_local(uri: str) -> bool:
    return uri == LOCAL


def shown(uri: str) -> str:
    """A host as labkit names it to the user: this host, or its URI without the query (which may
    hold a key file's path)."""
    return "this host" if is_local(uri) else uri.split("?")[0]


def virsh(uri: str, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True)
    except OSError as exc:  # no libvirt on this host (VirtualBox): nothing of a lab's is there
        return subprocess.CompletedProcess(args, 1, "", str(exc))


def volumes(uri: str) -> list[str]:
    """The volumes of the pool named as a lab's are; the boxes' base images, named after the box
    (labkit-VAGRANTSLASH-...), are no lab's."""
    listed = [line.split()[0] for line in virsh(uri, "vol-list", POOL).stdout.splitlines()[2:] if line.strip()]
    return [n for n in listed if names.is_labkit(n) and "_vagrant_box_image_" not in n]


def make_disks(uri: str, domains: list[str], base: str) -> list[str]:
    """Each domain's disk (DOMAIN.img, as vagrant-libvirt names it) that the pool lacks, made as a
    copy-on-write layer over the volume at path `base`, of its size; what could not be made, and why."""
    have = set(volumes(uri))
    missing = [d for d in domains if f"{d}.img" not in have]
    layer = ("--format", "qcow2", "--backing-vol", base, "--backing-vol-format", "qcow2")
    made = per_domain(uri, missing, "vol-create-as", POOL, "{}.img", "0", *layer)  # size 0: the base's
    return [f"{d}.img: {r.stderr.strip()}" for d, r in made.items() if r.returncode != 0]


def present(uri: str) -> Objects:
    """Every domain, volume and network in libvirt named as a lab's are (labkit-...)."""
    return Objects(
        domains=[n for n in virsh(uri, "list", "--all", "--name").stdout.split() if names.is_labkit(n)],
        volumes=volumes(uri),
        networks=[
            n
            for n in virsh(uri, "net-list", "--all", "--name").stdout.split()
            if names.is_labkit(n) and n not in names.OLD_SHARED
        ],
    )


def of(name: str, lab: Lab, seen: Objects) -> Objects:
    """The objects of `seen` that belong to the lab (or copy) called `name`, by their whole names."""
    domains = set(names.domains(name, lab.nodes))
    networks = set(names.networks(name, lab.networks))
    return Objects(
        domains=[n for n in seen.domains if n in domains],
        volumes=[n for n in seen.volumes if names.volume_domain(n) in domains],
        networks=[n for n in seen.networks if n in networks],
    )


def strays(labs: dict[str, Lab], seen: Objects) -> Objects:
    """What `seen` holds that belongs to none of the labs that are up (name -> lab)."""
    owned = set()
    for name, lab in labs.items():
        owned.update(of(name, lab, seen).names())
    return Objects(*[[n for n in names if n not in owned] for names in (seen.domains, seen.volumes, seen.networks)])


def claim_network(uri: str, name: str, cidr: IPv4Network, nat: bool) -> str | None:
    """Define and start a management network as vagrant-libvirt would (the host at .1, DHCP for
    the rest); None, or libvirt's reason when it refused. Starting is the claim: libvirt will not
    start a network whose range a running one already routes, so labs booked at once, even by other
    installations, cannot end up on one range."""
    with tempfile.NamedTemporaryFile("w", suffix=".xml") as definition:
        definition.write(management_network(name, cidr, nat))
        definition.flush()
        defined = virsh(uri, "net-define", definition.name)
    if defined.returncode != 0:
        return defined.stderr.strip()
    started = virsh(uri, "net-start", name)
    if started.returncode != 0:
        virsh(uri, "net-undefine", name)
        return started.stderr.strip()
    return None


DNSMASQ_XMLNS = "http://libvirt.org/schemas/network/dnsmasq/1.0"


def management_network(name: str, cidr: IPv4Network, nat: bool) -> str:
    """The network's libvirt XML. no-ping: before dnsmasq first offers an address it pings it and
    waits 3 s for no answer, while the booting VM waits for its lease. Only labkit's VMs are on
    this network, and dnsmasq hands out every address on it."""
    hosts = list(cidr.hosts())
    forward = "<forward mode='nat'/>" if nat else ""
    return (
        f"<network xmlns:dnsmasq='{DNSMASQ_XMLNS}'><name>{name}</name>{forward}"
        f"<ip address='{hosts[0]}' netmask='{cidr.netmask}'>"
        f"<dhcp><range start='{hosts[1]}' end='{hosts[-1]}'/></dhcp></ip>"
        "<dnsmasq:options><dnsmasq:option value='no-ping'/></dnsmasq:options></network>"
    )


def has_network(uri: str, name: str) -> bool:
    return virsh(uri, "net-info", name).returncode == 0


# ---- snapshots: a lab's state as `labkit up` left it, memory included ---------------------------

SNAPSHOT = "labkit-up"


def per_domain(uri: str, domains: list[str], *args: str) -> dict[str, subprocess.CompletedProcess]:
    """virsh ARGS for every domain (or volume, or network) at once ({} is its name): name -> what
    virsh did."""
    if not domains:
        return {}
    with ThreadPoolExecutor(max_workers=min(len(domains), 8)) as pool:
        results = pool.map(lambda d: virsh(uri, *[a.replace("{}", d) for a in args]), domains)
    return dict(zip(domains, results))


def _each(uri: str, domains: list[str], *args: str) -> list[str]:
    """per_domain(), the failures only, with virsh's reason."""
    return [f"{d}: {r.stderr.strip()}" for d, r in per_domain(uri, domains, *args).items() if r.returncode != 0]


def snapshot(uri: str, domains: list[str]) -> list[str]:
    """Take (or take again) each running domain's snapshot, disks and memory: libvirt's internal
    snapshot in the domain's qcow2 volume."""
    drop_snapshots(uri, domains)
    return _each(uri, domains, "snapshot-create-as", "--domain", "{}", "--name", SNAPSHOT, "--atomic")


def has_snapshot(uri: str, domains: list[str]) -> bool:
    return not _each(uri, domains, "snapshot-info", "--domain", "{}", "--snapshotname", SNAPSHOT)


def revert(uri: str, domains: list[str]) -> list[str]:
    """Every domain back to its snapshot, running: memory, disks and devices as they were."""
    return _each(uri, domains, "snapshot-revert", "--domain", "{}", "--snapshotname", SNAPSHOT, "--running", "--force")


def save(uri: str, domains: list[str]) -> list[str]:
    """Stop each domain with its memory saved to disk (libvirt's managed save): starting it again
    restores it as it was, in seconds, instead of booting it; running, also if it was paused."""
    return _each(uri, domains, "managedsave", "--running", "{}")


def drop_snapshots(uri: str, domains: list[str]) -> None:
    _each(uri, domains, "snapshot-delete", "--domain", "{}", "--snapshotname", SNAPSHOT)


def remove(uri: str, objects: Objects) -> list[str]:
    """Stop and remove each object, the domains, the volumes and the networks each at once; what
    could not be removed, with virsh's reason. A domain's snapshots go with it (their data is in
    its volume)."""
    per_domain(uri, objects.domains, "destroy", "{}")  # fails harmlessly when it is not running
    undefine = ("undefine", "--snapshots-metadata", "--managed-save", "{}")
    failed = [f"domain {f}" for f in _each(uri, objects.domains, *undefine)]
    failed += [f"volume {f}" for f in _each(uri, objects.volumes, "vol-delete", "--pool", POOL, "{}")]
    per_domain(uri, objects.networks, "net-destroy", "{}")  # fails harmlessly when it is not active
    return failed + [f"network {f}" for f in _each(uri, objects.networks, "net-undefine", "{}")]


# ---- a libvirt host: what it runs, and what it can run -----------------------------------------

STATES = {
    "1": "running",
    "2": "blocked",
    "3": "paused",
    "4": "shutdown",
    "5": "shutoff",
    "6": "crashed",
    "7": "pmsuspended",
}


@dataclass
class Domain:
    state: str
    rss_mib: int  # host memory its QEMU holds; 0 when it does not run


SAVED = "saved"  # shut off with its memory on disk (libvirt's managed save): starting it restores it


def domains(uri: str) -> dict[str, Domain] | None:
    """Every labkit-* domain on the host, with its state and memory, in one call (two when one is
    shut off: whether its memory was saved); None when the host's libvirt does not answer."""
    stats = virsh(uri, "domstats", "--state", "--balloon")
    if stats.returncode != 0:
        return None
    found: dict[str, Domain] = {}
    name = None
    for line in stats.stdout.splitlines():
        if line.startswith("Domain: "):
            name = line.split("'")[1]
            if names.is_labkit(name):
                found[name] = Domain("?", 0)
        elif name in found and "=" in line:
            key, value = line.strip().split("=", 1)
            if key == "state.state":
                found[name].state = STATES.get(value, value)
            elif key == "balloon.rss":
                found[name].rss_mib = int(value) // 1024
    if any(d.state == "shutoff" for d in found.values()):
        # (domstats' reason for it, "saved", does not outlive a restart of libvirtd)
        for name in virsh(uri, "list", "--all", "--with-managed-save", "--name").stdout.split():
            if name in found:
                found[name].state = SAVED
    return found


def descriptions(uri: str, domains: list[str]) -> dict[str, str]:
    """Each domain's description, all asked at once (vagrant-libvirt's names the lab's folder)."""
    said = per_domain(uri, domains, "desc", "{}")
    return {d: r.stdout.strip() for d, r in said.items() if r.returncode == 0}


def leased_addresses(uri: str, domains: list[str]) -> dict[str, str]:
    """Each domain's one IPv4 address leased by libvirt's DHCP (its management network's), asked
    of every domain at once; a domain with none, or with several (an old lease beside a new one),
    is left out."""
    found = {}
    for domain, result in per_domain(uri, domains, "domifaddr", "{}", "--source", "lease").items():
        leased = ipv4_leases(result.stdout) if result.returncode == 0 else []
        if len(leased) == 1:
            found[domain] = leased[0]
    return found


def ipv4_leases(domifaddr: str) -> list[str]:
    """The IPv4 addresses in what `virsh domifaddr --source lease` printed."""
    return re.findall(r"\sipv4\s+(\d+\.\d+\.\d+\.\d+)/\d+", domifaddr)


def host_uuid(uri: str) -> str | None:
    """The host's own id: two URIs (qemu:///system, qemu+ssh://...@this-host/system) may name one host."""
    caps = virsh(uri, "capabilities")
    found = ET.fromstring(caps.stdout).find("./host/uuid") if caps.returncode == 0 else None
    return found.text if found is not None else None


def kvm_problem(uri: str) -> str | None:
    """None when the host's libvirt can run KVM guests, else why not. As for this host, the CPU
    must offer hardware virtualization: /dev/kvm alone proves little inside a VM."""
    caps = virsh(uri, "capabilities")
    if caps.returncode != 0:
        return f"libvirt does not answer: {caps.stderr.strip()}"
    root = ET.fromstring(caps.stdout)
    if root.find(".//guest/arch/domain[@type='kvm']") is None:
        return "libvirt offers no kvm domains there"
    features = {f.get("name") for f in root.findall("./host/cpu/feature")}
    if not features & {"vmx", "svm"}:
        return "the CPU offers no hardware virtualization (no vmx/svm flag)"
    return None


def has_emulator(uri: str, path: str) -> bool:
    """Whether the host has this QEMU binary (asked of libvirt, which runs it)."""
    return virsh(uri, "domcapabilities", "--emulatorbin", path, "--virttype", "qemu").returncode == 0


SYSTEM_URI = re.compile(r"^qemu(\+\w+)?://[^/]*/system(\?.*)?$")


def uri_for(connect: str, hosts: dict[str, str]) -> str:
    """--connect's value, a libvirt URI or the name of a host in labkit's config file, as a URI."""
    uri = connect if "://" in connect else hosts.get(connect)
    if uri is None:
        known = f" (it names: {', '.join(hosts)})" if hosts else ""
        raise LabkitError(
            f"--connect {connect}: no such host in labkit's config file{known}. Give a libvirt URI "
            "such as qemu+ssh://user@host/system, or add the host under hosts: in LABKIT_HOME/config.yaml"
        )
    if not SYSTEM_URI.match(uri):
        raise LabkitError(
            f"--connect {connect}: {uri} is not the URI of a host's system libvirt. "
            "Use qemu+ssh://user@host/system (qemu:///system is this host)"
        )
    return uri
