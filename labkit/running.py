"""A running lab: the one owner of its folder, its VMs, its SSH connections and its configuration.

Every command that acts on a lab that is up goes through a RunningLab: the CLI, the verify
suite, failover, bench, trace and weight. Its folder under LABKIT_HOME holds the lab file as the
lab runs, the rendered Vagrantfile and Vagrant's `.vagrant/`, the only record of the machines.
A running lab is named after its lab, or, for a copy (`labkit up nat --as alice`), the copy's
name: the folder, the VMs, the networks and the lock all carry that name. Its record (record.py)
says the rest: the box and kernel, the libvirt host and the management network.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import yaml
from fabric import Connection
from invoke.watchers import StreamWatcher

from labkit import box, home, lock
from labkit.apply import ssh
from labkit.boot import health, leftovers, libvirt, names, vagrant
from labkit.errors import LabkitError
from labkit.labfile import Lab, lab_file, load_lab, read_lab
from labkit.plan.ipvs import ADDRESSES, COMMANDS, holders, parse_list
from labkit.plan.steps import CLOCK, plan
from labkit.record import Record
from labkit.render.vagrantfile import Provider

SNAPSHOT_LAB = "lab.snapshot.yaml"  # the lab file as it was when the snapshot was taken
BOOT_SECONDS = 600  # from `vagrant up` until every node of a labkit box answers SSH, at most
CLOCK_WAIT_SECONDS = 60  # after a reset or snapshot, until a node answers SSH to have its clock set


class RunningLab:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.name = folder.name
        self._lab: Lab | None = None
        self._booked: Record | None = None
        self._connections: dict[str, Connection] = {}
        self._connecting = threading.Lock()

    # ---- which lab ------------------------------------------------------------------------

    @staticmethod
    def names() -> list[str]:
        """The labs and copies that are up (or were being booted)."""
        return sorted(p.name for p in home.labs_dir().glob("*") if (p / "Vagrantfile").exists())

    @classmethod
    def all(cls) -> list[RunningLab]:
        return [cls(home.lab_dir(name)) for name in cls.names()]

    @classmethod
    def find(cls, name: str | None) -> RunningLab:
        """The lab a command acts on: as named (a copy's or a lab's name, or its lab file), or the
        only one up."""
        up = cls.names()
        if name is None:
            if not up:
                raise LabkitError("no lab is up. Start one with: labkit up nat")
            if len(up) > 1:
                raise LabkitError(f"several labs are up ({', '.join(up)}): name one, e.g. labkit verify {up[0]}")
            name = up[0]
        elif name not in up:
            if not lab_file(name).exists():
                raise LabkitError(
                    f"no lab or copy {name!r} is up (up: {', '.join(up) or 'none'}). "
                    f"Start one with: labkit up LAB --as {name}"
                )
            name = read_lab(name).name  # a lab file's path, or a known lab that is not up
        if name not in up:
            copies = [r.name for r in cls.all() if r.lab.name == name]
            if copies:
                raise LabkitError(
                    f"the lab {name} is not up, but copies of it are: {', '.join(copies)}. "
                    f"Name one, e.g. labkit status {copies[0]}"
                )
            raise LabkitError(f"the lab {name} is not up. Start it with: labkit up {name}")
        return cls(home.lab_dir(name))

    @classmethod
    def create(cls, name: str, source: Path, vagrantfile: str, booked: Record | None = None) -> RunningLab:
        """The folder of a lab (or copy) about to boot: its record (given for a new lab, kept for
        one being continued), its Vagrantfile and its lab file."""
        folder = home.lab_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        if booked is not None:
            booked.write(folder)  # before the Vagrantfile: a folder that is up has both
        (folder / "Vagrantfile").write_text(vagrantfile)
        shutil.copyfile(source, folder / "lab.yaml")
        return cls(folder)

    @property
    def booked(self) -> Record:
        """What labkit decided when it booked the lab: box, kernel, host, management range."""
        if self._booked is None:
            self._booked = Record.read(self.folder)
        return self._booked

    @property
    def lab(self) -> Lab:
        """The lab as it runs (the file it was brought up with, or changed with `labkit weight`)."""
        if self._lab is None:
            self._lab = load_lab(self.folder / "lab.yaml")
        return self._lab

    def adopt(self, source: Path) -> Lab:
        """Run from this lab file from now on (an edited file, or the original after `weight`)."""
        edited = load_lab(source)
        if edited.failover != self.lab.failover:
            raise LabkitError(
                f"failover changed from {self.lab.failover.value} to {edited.failover.value}: the "
                f"directors cannot be converted in place. Run: labkit down {self.name} && labkit up {source}"
            )
        shutil.copyfile(source, self.folder / "lab.yaml")
        self._lab = edited
        return edited

    def record(self, lab: Lab, why: str) -> None:
        """Keep `lab` as the lab that runs now: verify checks it, `labkit provision LAB` undoes it."""
        data = lab.model_dump(mode="json", exclude_defaults=True)
        (self.folder / "lab.yaml").write_text(
            f"# {self.name} as it runs: {why}\n" + yaml.safe_dump(data, sort_keys=False)
        )
        self._lab = lab

    # ---- its VMs --------------------------------------------------------------------------

    def boot(
        self,
        provider: Provider,
        on_progress: Callable[[str, str], None],
        on_done: Callable[[ssh.NodeResult], None] | None = None,
    ) -> float:
        """`vagrant up`, every node at once; the moment (time.monotonic()) every node was up. With
        on_done, provision too: a labkit box's node on this host as soon as its sshd answers, while
        the others still boot (their configuration then waits for no one); any other node once the
        boot is over. A node that failed makes it an error, as provision() says.

        A labkit box's nodes on this host are waited for here, not by Vagrant: given no box (the
        Vagrantfile says why), `vagrant up` only defines and starts the VMs."""
        early = self.reads_leases
        failed: list[BaseException] = []

        def booting() -> None:
            try:
                vagrant.up(self.folder, provider, on_progress)
            except BaseException as exc:  # raised again below, in the caller's thread
                failed.append(exc)

        with ThreadPoolExecutor(max_workers=len(self.lab.nodes)) as pool:
            started: dict[str, Future] = {}
            answered: dict[str, str] = {}
            if early:
                worker = threading.Thread(target=booting, daemon=True)
                worker.start()
                deadline = time.monotonic() + BOOT_SECONDS
                try:
                    while not failed and (worker.is_alive() or len(answered) < len(self.lab.nodes)):
                        found = self._answering([n for n in self.lab.nodes if n not in answered])
                        if found:
                            answered.update(found)
                            self._write_ssh_config(answered)
                            for node in found:
                                on_progress(node, "answers SSH")
                                if on_done is not None:
                                    started[node] = pool.submit(self._provision_one, self.lab, node)
                        if time.monotonic() > deadline:
                            late = ", ".join(n for n in self.lab.nodes if n not in answered)
                            raise vagrant.BootError(
                                f"{late} did not answer SSH within {BOOT_SECONDS} s. What each VM printed "
                                f"as it booted is in {self.folder}/console-NODE.log"
                            )
                        if worker.is_alive():
                            worker.join(1)
                        else:
                            time.sleep(1)
                except BaseException:  # no `vagrant up` left running in the lab's folder
                    lock.stop_children(folder=self.folder)
                    raise
            else:
                booting()
            ended = time.monotonic()
            if failed:
                raise failed[0]
            self.write_ssh_config()
            if on_done is not None:
                for node in self.lab.nodes:
                    if node not in started:  # not setdefault: its argument would start a second provisioning
                        started[node] = pool.submit(self._provision_one, self.lab, node)
                self._results(_in_turn([started[node] for node in self.lab.nodes], on_done))
        return ended

    @property
    def reads_leases(self) -> bool:
        """Whether the nodes' addresses come from libvirt's DHCP leases: a labkit box (whose
        ssh_config labkit writes) on this host (whose management network labkit reaches)."""
        return self.on_libvirt and libvirt.is_local(self.uri) and box.is_labkit_box(self.booked.box)

    def _answering(self, nodes: list[str]) -> dict[str, str]:
        """Node -> address, for those of `nodes` with a lease whose sshd sends its greeting."""
        domains = {names.domain(self.name, node): node for node in nodes}
        leased = libvirt.leased_addresses(self.uri, list(domains))
        return {domains[d]: address for d, address in leased.items() if ssh.answers(address)}

    def write_ssh_config(self) -> None:
        """The nodes' SSH settings, in the file ssh, fabric and testinfra read. For a labkit box on
        this host, written from libvirt's DHCP leases at once; `vagrant ssh-config` takes 10 s of
        Ruby or more while guests still boot, and is asked only where that cannot be (another
        host's VMs, reached through it; another box, with Vagrant's own key)."""
        if self.reads_leases:
            domains = {names.domain(self.name, node): node for node in self.lab.nodes}
            leased = libvirt.leased_addresses(self.uri, list(domains))
            if len(leased) == len(domains):
                self._write_ssh_config({domains[d]: address for d, address in leased.items()})
                return
        vagrant.ssh_config(self.folder, refresh=True)

    def _write_ssh_config(self, addresses: dict[str, str]) -> None:
        # replaced whole: a node being provisioned may be reading it
        new = self.folder / (vagrant.SSH_CONFIG + ".new")
        new.write_text(ssh.config(addresses, home.key()))
        new.replace(self.folder / vagrant.SSH_CONFIG)

    def status(self) -> dict[str, str]:
        """Node -> its VM's state ("running", "paused", "shutoff", "missing", ...): libvirt's,
        asked directly (Vagrant takes seconds of Ruby to say it), or Vagrant's elsewhere."""
        return self.health().vms if self.on_libvirt else vagrant.status(self.folder)

    def health(self) -> health.Health:
        """The lab's VMs, networks, NICs and disks as libvirt has them (libvirt labs only)."""
        return health.read(self.name, self.lab, self.uri)

    def problems(self, seen: health.Health | None = None) -> list[str]:
        """What keeps the lab from being whole, one line each with its repair: its parts in
        libvirt, and the box a VM made again would need."""
        found = (seen or self.health()).problems() if self.on_libvirt else []
        made = self.booked.box
        if box.is_labkit_box(made) and made not in {b.name for b in box.labkit_boxes()}:
            again = f"labkit box build --kernel {self.booked.kernel}" if self.booked.kernel else "labkit box build"
            found.append(
                f"the box {made} is gone from Vagrant: no VM of {self.name} can be made again until it is back: "
                f"{again} (or labkit box import FILE)"
            )
        return found

    def freeze(self, node: str) -> None:
        self._forget(node)
        if self.on_libvirt:
            self._virsh(node, "suspend")
        else:
            vagrant.freeze(self.folder, node)

    def thaw(self, node: str) -> None:
        if self.on_libvirt:
            self._virsh(node, "resume")
        else:
            vagrant.thaw(self.folder, node)

    def _virsh(self, node: str, action: str) -> None:
        """Pause or resume a node's VM through libvirt itself: at once, where Vagrant's Ruby takes
        about two seconds (the load of a failure scenario waits for the break)."""
        done = libvirt.virsh(self.uri, action, names.domain(self.name, node))
        if done.returncode != 0:
            raise LabkitError(
                f"virsh {action} of {node} failed: {done.stderr.strip()}. "
                f"labkit status {self.name} shows its VMs; labkit heal {self.name} brings the lab back"
            )

    def paused(self) -> list[str]:
        # vagrant-libvirt says "paused", VirtualBox "saved"; python-vagrant reports both as "saved".
        # (On libvirt labkit asks libvirt itself, where "saved" is a VM `labkit stop` put on disk.)
        frozen = ("paused",) if self.on_libvirt else ("paused", "saved")
        return [node for node, state in self.status().items() if state in frozen]

    @property
    def domains(self) -> list[str]:
        """The libvirt domains of the lab's nodes."""
        return names.domains(self.name, self.lab.nodes)

    @property
    def on_libvirt(self) -> bool:
        return self.booked.provider == Provider.libvirt

    @property
    def uri(self) -> str:
        """The libvirt its VMs run under."""
        return self.booked.uri

    def snapshot(self) -> None:
        """Keep the lab's state (every VM's memory and disks) for reset()."""
        self._need_libvirt("snapshot")
        failed = libvirt.snapshot(self.uri, self.domains)
        if failed:
            raise LabkitError("the snapshot failed:\n" + "\n".join(f"  {f}" for f in failed))
        shutil.copyfile(self.folder / "lab.yaml", self.folder / SNAPSHOT_LAB)  # the lab the VMs run
        self.set_clocks("the snapshot")  # each VM stood still while its memory was saved

    def set_clocks(self, done: str) -> None:
        """Each node's clock set to the host's again, from its RTC, after `done` stopped the VMs for
        a while: a VM's clock stands still while libvirt saves its memory, and goes back with a
        snapshot. Set whatever the step's check says: a clock 2 s behind passes it, and would not
        a moment later."""
        nodes = list(self.lab.nodes)
        always = [dataclasses.replace(CLOCK, unless=("false",))]

        def set_clock(node: str) -> ssh.NodeResult:
            # A VM that libvirt restarted to revert it (its QEMU anew, as after a host's restart)
            # refuses SSH for a moment, however long its guest has been up: ask again meanwhile.
            deadline = time.monotonic() + CLOCK_WAIT_SECONDS
            while True:
                result = ssh.apply(node, self.connection(node), always)
                if result.reached or time.monotonic() > deadline:
                    return result
                self._forget(node)
                time.sleep(1)

        with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
            results = list(pool.map(set_clock, nodes))
        late = [f"  {r.node}: {r.error}" for r in results if r.error]
        if late:
            raise LabkitError(
                f"{done} is done, but a clock could not be set to the host's:\n"
                + "\n".join(late)
                + f"\nSet it with: labkit provision {self.name}"
            )

    def stop(self) -> list[str]:
        """Stop every running VM of the lab with its memory saved to disk, for `labkit up` to
        restore as it was (a VM paused by `labkit fail` too, to come back running); the nodes
        stopped."""
        if not self.on_libvirt:
            raise LabkitError(f"stop uses libvirt's managed save: the lab {self.name} runs under another provider")
        self.close()  # the connections end with the VMs
        nodes = [node for node, state in self.status().items() if state in ("running", "paused")]
        if not nodes:
            raise LabkitError(f"no VM of {self.name} is running: nothing to stop. labkit status {self.name} says why")
        failed = libvirt.save(self.uri, [names.domain(self.name, node) for node in nodes])
        if failed:
            raise LabkitError(
                "saving the VMs failed:\n"
                + "\n".join(f"  {f}" for f in failed)
                + f"\nThe VMs not named run on. Try again, or remove the lab with: labkit down {self.name}"
            )
        return nodes

    def reset(self) -> None:
        """Every VM back to the snapshot, running; nothing is provisioned again."""
        self._need_libvirt("reset")
        if not libvirt.has_snapshot(self.uri, self.domains):
            raise LabkitError(
                f"the lab {self.name} has no snapshot to go back to. Take one with: labkit snapshot {self.name}"
            )
        self.close()  # the connections belong to the VMs' present, which is discarded
        # a network stopped under the lab (a libvirt or host restart) must run for the VMs' NICs
        for net, state in self.health().networks.items():
            if state == "inactive":
                libvirt.virsh(self.uri, "net-start", net)
        failed = libvirt.revert(self.uri, self.domains)
        if failed:
            raise LabkitError(
                "the reset failed:\n"
                + "\n".join(f"  {f}" for f in failed)
                + f"\nTry again, or bring the lab back with: labkit heal {self.name}"
            )
        if libvirt.is_local(self.uri):  # a VM reverted in place keeps its taps, off a restarted network's bridge
            health.reattach(self.uri, self.health())
        self.set_clocks("the reset")  # each clock went back with the snapshot
        if (self.folder / SNAPSHOT_LAB).exists():  # a weight changed since runs no more
            shutil.copyfile(self.folder / SNAPSHOT_LAB, self.folder / "lab.yaml")
            self._lab = None

    def _need_libvirt(self, what: str) -> None:
        if not self.on_libvirt:
            raise LabkitError(f"{what} uses libvirt's snapshots: the lab {self.name} runs under another provider")

    def destroy(self) -> None:
        """Remove every VM, volume and network of the lab, then its folder. On libvirt they are
        found by name, which also finds what Vagrant's state misses (lost, corrupt, or a boot cut
        short); Vagrant's own destroy would take seconds of Ruby to remove the same ones."""
        self.close()
        refused = None
        if not self.on_libvirt:
            try:
                vagrant.destroy(self.folder)
            except vagrant.BootError as exc:
                refused = exc
        left = leftovers.remove_all(self.name, self.lab, self.uri)
        if left:
            raise LabkitError(
                f"{self.name}: these could not be removed:\n"
                + "\n".join(f"  {f}" for f in left)
                + (f"\n{refused}" if refused else "")
                + f"\nFix the cause, then run: labkit down {self.name}"
            )
        if self.on_libvirt:
            vagrant.forget(self.folder)
        shutil.rmtree(self.folder, ignore_errors=True)

    # ---- its nodes over SSH ---------------------------------------------------------------

    @property
    def ssh_config(self) -> Path:
        return vagrant.ssh_config(self.folder)

    def connection(self, node: str) -> Connection:
        """One SSH connection per node, opened on first use and kept for the lab's lifetime."""
        with self._connecting:
            if node not in self._connections:
                self._connections[node] = ssh.connect(node, self.ssh_config)
            return self._connections[node]

    def _forget(self, node: str) -> None:
        with self._connecting:
            conn = self._connections.pop(node, None)
        if conn is not None:
            conn.close()

    def run(self, node: str, words: list[str], watchers: list[StreamWatcher] = (), pty: bool = False) -> str:
        """A command on a node: its output. A connection that broke (a node that was paused or
        rebooted) is opened again once."""
        try:
            return ssh.run(self.connection(node), words, watchers, pty)
        except ssh.Unreachable:
            self._forget(node)
            return ssh.run(self.connection(node), words, watchers, pty)

    def run_all(self, node: str, commands: dict[str, list[str]]) -> dict[str, str]:
        """Several commands on one node: name -> output."""
        return {name: self.run(node, words) for name, words in commands.items()}

    def run_on(self, nodes: list[str], commands: dict[str, list[str]]) -> dict[str, dict[str, str]]:
        """run_all() on several nodes at once: node -> name -> output."""
        if not nodes:  # a lab without directors (a routing mesh) has no tables to read there
            return {}
        with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
            return dict(zip(nodes, pool.map(lambda node: self.run_all(node, commands), nodes)))

    def provision(
        self,
        lab: Lab | None = None,
        nodes: list[str] | None = None,
        on_done: Callable[[ssh.NodeResult], None] = lambda result: None,
    ) -> list[ssh.NodeResult]:
        """Push each node's plan, all nodes at once; on_done(result) as each finishes, in order.
        A node that failed makes it an error naming every failed node and its step."""
        lab = lab or self.lab
        nodes = nodes or list(lab.nodes)
        with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
            return self._results(_in_turn([pool.submit(self._provision_one, lab, node) for node in nodes], on_done))

    def _provision_one(self, lab: Lab, node: str) -> ssh.NodeResult:
        result = ssh.apply(node, self.connection(node), plan(lab, node))
        if not result.reached:
            self._forget(node)
        return result

    def _results(self, results: list[ssh.NodeResult]) -> list[ssh.NodeResult]:
        failed = [r for r in results if r.error]
        if failed:
            raise LabkitError(
                "provisioning failed:\n"
                + "\n".join(f"  {r.node}: {r.error}" for r in failed)
                + f"\nFix the cause, then run: labkit provision {self.name}"
            )
        return results

    def holders(self, paused: set[str] = frozenset()) -> list[str]:
        """The directors (of those not paused) that hold the first VIP."""
        running = [d for d in self.lab.directors if d not in paused]
        seen = self.run_on(running, {"addresses": ADDRESSES})
        return holders(self.lab, {d: out["addresses"] for d, out in seen.items()})

    def whole(self) -> bool:
        """The preferred director holds the VIPs and its checkers see every real server. One SSH
        connection per director for each look."""
        lab = self.lab
        outputs = self.run_on(lab.directors, {"addresses": ADDRESSES, "list": COMMANDS["list"]})
        if holders(lab, {d: out["addresses"] for d, out in outputs.items()}) != [lab.active_director]:
            return False
        seen = {s.key: s for s in parse_list(outputs[lab.active_director]["list"])}
        return all(svc.key in seen and len(seen[svc.key].destinations) == len(svc.real_servers) for svc in lab.services)

    def wait_whole(self, seconds: float) -> None:
        """Wait until the pair is whole (a checker puts back a real server a second or more after
        it answers again), at most `seconds`."""
        deadline = time.monotonic() + seconds
        while not self.whole():
            if time.monotonic() > deadline:
                raise LabkitError(
                    f"{self.name}: the preferred director did not hold the VIPs with every real server "
                    f"checked up within {seconds:.0f} s"
                )
            time.sleep(0.5)

    def holder(self, paused: set[str] = frozenset()) -> str | None:
        """The director that holds the first VIP, if exactly one does."""
        found = self.holders(paused)
        return found[0] if len(found) == 1 else None

    def close(self) -> None:
        with self._connecting:
            connections, self._connections = list(self._connections.values()), {}
        for conn in connections:
            conn.close()

    def __enter__(self) -> RunningLab:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _in_turn(futures: list[Future], on_done: Callable[[ssh.NodeResult], None]) -> list[ssh.NodeResult]:
    """The futures' results in the order given, on_done told of each as it comes."""
    results = []
    for future in futures:
        results.append(future.result())
        on_done(results[-1])
    return results
