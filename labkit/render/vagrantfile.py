"""Lab -> Vagrantfile text, from Vagrantfile.j2. Pure: no VM, no subprocess."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from labkit.boot import names
from labkit.box.guest_key import OEM_KEY_PREFIX
from labkit.labfile import Lab

TEMPLATE = "Vagrantfile.j2"
# Where scripts/setup installs render/qemu-tcg: libvirt's QEMU user must be able to run it.
TCG_EMULATOR = "/usr/local/libexec/labkit-qemu-tcg"


class Provider(str, Enum):
    libvirt = "libvirt"
    virtualbox = "virtualbox"


@dataclass(frozen=True)
class Target:
    """Where and how the lab boots: everything the Vagrantfile needs besides the lab."""

    provider: Provider = Provider.libvirt
    box: str = "labkit/bookworm"
    driver: str = "kvm"  # libvirt domain type: kvm, or qemu (software emulation)
    emulator: str | None = None  # libvirt: a QEMU wrapper that caps TCG's translation cache
    private_key: str | None = None  # set for a labkit box, which takes labkit's own key at boot
    public_key: str | None = None  # its public half ("ssh-ed25519 AAAA..."), given to each VM
    student_key: str | None = None  # a class seat's student's public key, trusted beside it (labkit class)
    source: str = ""  # the lab file, named in the header
    name: str | None = None  # the copy's name (labkit up --as): its VMs and networks are named after it
    uri: str | None = None  # another host's libvirt (qemu+ssh://...); None: this host's
    management: str = "192.168.124.0/24"  # the lab's own management network (Vagrant's DHCP and SSH)
    kernel: str | None = None  # the --kernel the box was chosen for: kept in the lab's record, not rendered
    # libvirt: the box's kernel and initramfs as the host's pool holds them, and their command
    # line, for QEMU to load itself (a labkit box of format 4 on); None: the box's boot loader
    boot_kernel: str | None = None
    boot_initrd: str | None = None
    boot_cmdline: str | None = None
    # libvirt on this host: the box's image in the pool. labkit makes each VM's disk on it and waits
    # for the VMs itself, so Vagrant is given no box: it defines and starts the VMs, and is done.
    base_disk: str | None = None


def mac(net_index: int, node_index: int) -> str:
    """A fixed MAC per (network, node): the plan finds each lab interface by it, whatever
    name the guest's kernel gave the NIC."""
    return f"52:54:00:4c:{net_index + 1:02x}:{node_index + 1:02x}"


@dataclass(frozen=True)
class Interface:
    """A node's NIC on a lab network. The guest names it after the network."""

    network: str
    address: str
    prefixlen: int
    netmask: str
    mac: str

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefixlen}"


def interfaces(lab: Lab, node: str) -> list[Interface]:
    node_index = list(lab.nodes).index(node)
    return [
        Interface(
            net,
            str(addr),
            lab.networks[net].prefixlen,
            str(lab.networks[net].netmask),
            mac(list(lab.networks).index(net), node_index),
        )
        for net, addr in lab.nodes[node].addresses.items()
    ]


def render(lab: Lab, target: Target) -> str:
    import jinja2  # only render needs it: every command imports this module for Provider

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("labkit.render", ""),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    nodes = [{"name": name, "interfaces": interfaces(lab, name)} for name in lab.nodes]
    name = target.name or lab.name
    return env.get_template(TEMPLATE).render(
        lab=lab,
        nodes=nodes,
        target=target,
        name=name,
        prefix=names.prefix(name),
        management_network=names.management(name),
        networks={net: names.network(name, net) for net in lab.networks},
        oem_key_prefix=OEM_KEY_PREFIX,
    )
