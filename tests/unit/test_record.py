"""A lab's record: written once when the lab is booked, read by everything that asks where and
from what the lab was made; an older labkit's folder read from its Vagrantfile."""

import json

import pytest

from labkit.errors import LabkitError
from labkit.labfile import LABS, load_lab
from labkit.record import Record
from labkit.render.vagrantfile import Provider, Target, render
from labkit.running import RunningLab

NAT = load_lab(LABS / "nat" / "lab.yaml")
REMOTE = "qemu+ssh://teacher@big/system"


@pytest.fixture
def boxes(tmp_path, monkeypatch):
    """A Vagrant home holding one labkit box built for kernel sid."""
    monkeypatch.setenv("VAGRANT_HOME", str(tmp_path / "vagrant"))
    meta = tmp_path / "vagrant" / "boxes" / "labkit-VAGRANTSLASH-linux-7.2" / "1" / "libvirt" / "labkit-box.json"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"spec": "sid", "kernel": "7.2.13-amd64"}))


def test_a_booked_copy_records_its_host_box_and_kernel(tmp_path, boxes):
    target = Target(box="labkit/linux-7.2", kernel="sid", name="nat-2", uri=REMOTE, management="192.168.130.0/24")
    booked = Record.booked(NAT, target)
    assert (booked.lab, booked.name, booked.uri, booked.box) == ("nat", "nat-2", REMOTE, "labkit/linux-7.2")
    assert (booked.kernel, booked.release, booked.management) == ("sid", "7.2.13-amd64", "192.168.130.0/24")
    assert booked.provider == Provider.libvirt and booked.created_at.tzinfo is not None
    booked.write(tmp_path)
    assert json.loads((tmp_path / "record.json").read_text())["provider"] == "libvirt"
    assert Record.read(tmp_path) == booked


def test_the_kernel_spec_is_not_rendered():
    assert render(NAT, Target(kernel="sid")) == render(NAT, Target())


def test_a_lab_on_this_host_from_the_default_box(tmp_path, boxes):
    booked = Record.booked(NAT, Target())
    assert (booked.name, booked.uri, booked.kernel, booked.release) == ("nat", "qemu:///system", None, None)


def test_a_running_lab_is_read_from_its_record_not_its_vagrantfile(tmp_path, boxes):
    booked = Record.booked(NAT, Target(uri=REMOTE, name="nat-2"))
    booked.write(tmp_path)
    (tmp_path / "Vagrantfile").write_text(render(NAT, Target(provider=Provider.virtualbox)))  # says otherwise
    running = RunningLab(tmp_path)
    assert (running.uri, running.on_libvirt, running.booked) == (REMOTE, True, booked)


@pytest.mark.parametrize(
    "target, uri, provider",
    [
        (Target(box="labkit/linux-7.2", uri=REMOTE, management="192.168.130.0/24"), REMOTE, Provider.libvirt),
        (Target(box="labkit/linux-7.2", management="192.168.130.0/24"), "qemu:///system", Provider.libvirt),
        (Target(box="labkit/linux-7.2", provider=Provider.virtualbox), "qemu:///system", Provider.virtualbox),
    ],
)
def test_an_older_labkits_folder_is_read_from_its_vagrantfile(tmp_path, boxes, target, uri, provider):
    folder = tmp_path / "nat-2"
    folder.mkdir()
    (folder / "Vagrantfile").write_text(render(NAT, target))
    found = Record.read(folder)
    assert (found.lab, found.name, found.uri, found.box, found.provider) == ("nat", "nat-2", uri, target.box, provider)
    assert (found.kernel, found.release) == (None, "7.2.13-amd64")  # the box's metadata says
    assert found.management == ("192.168.130.0/24" if provider == Provider.libvirt else None)


def test_a_record_that_cannot_be_read_says_what_to_do(tmp_path):
    with pytest.raises(LabkitError, match="holds neither record.json nor a Vagrantfile: it is no lab's folder"):
        Record.read(tmp_path)
    (tmp_path / "record.json").write_text('{"lab": "nat"}')
    with pytest.raises(LabkitError, match="record.json is not a lab's record .*Remove it: labkit then reads"):
        Record.read(tmp_path)


def test_a_new_labs_folder_has_its_record_before_vagrant_runs(tmp_path, monkeypatch, boxes):
    monkeypatch.setenv("LABKIT_HOME", str(tmp_path / "home"))
    booked = Record.booked(NAT, Target(name="nat-2", kernel="sid", box="labkit/linux-7.2"))
    running = RunningLab.create("nat-2", LABS / "nat" / "lab.yaml", render(NAT, Target(name="nat-2")), booked)
    assert Record.read(running.folder) == booked
    again = RunningLab.create("nat-2", LABS / "nat" / "lab.yaml", "# rendered again\n")  # continued: kept
    assert again.booked == booked
