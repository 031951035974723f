"""A class's pure parts: the roster, placing seats over hosts, waves, ports, the guard's rules,
the student's ssh_config, the teacher's page, and the Vagrantfile of a seat."""

import pytest
from typer.testing import CliRunner

from labkit.cli import app
from labkit.errors import LabkitError
from labkit.labfile import LABS, load_lab
from labkit.operate import classroom, faults
from labkit.render.vagrantfile import Target, render

NAT = load_lab(LABS / "nat" / "lab.yaml")
HERE, THERE = "qemu:///system", "qemu+ssh://teacher@big.example.org/system"


def test_a_number_gives_numbered_seats():
    assert classroom.roster("3") == ["seat1", "seat2", "seat3"]


@pytest.mark.parametrize(
    "text, said",
    [
        ("ana\nBen\n", "students.txt:2: 'Ben' is not a plain name"),
        ("ana\n# a comment\nana\n", "students.txt:3: ana is given twice"),
        ("ana smith\n", "'ana smith' is not a plain name"),
        ("# nobody\n", "names no student"),
    ],
)
def test_a_bad_roster_is_one_line(tmp_path, text, said):
    roster = tmp_path / "students.txt"
    roster.write_text(text)
    with pytest.raises(LabkitError, match=said):
        classroom.roster(str(roster))


def test_the_roster_reads_names_and_skips_comments(tmp_path):
    roster = tmp_path / "students.txt"
    roster.write_text("# morning\nana\n\nben  # late\n")
    assert classroom.roster(str(roster)) == ["ana", "ben"]


def room(uri: str, seats: int, cores: int = 2) -> classroom.Room:
    return classroom.Room(uri, seats * 1000 + 999, 1000, cores)


def test_seats_spread_over_hosts_with_room():
    placed = classroom.place(["a", "b", "c", "d"], [room(HERE, 1), room(THERE, 5)], {})
    assert placed == {"a": HERE, "b": THERE, "c": THERE, "d": THERE}
    # a class continued keeps its seats where they are
    assert classroom.place(["a", "e"], [room(HERE, 0), room(THERE, 1)], {"a": HERE}) == {"a": HERE, "e": THERE}


def test_more_seats_than_room_says_how_many_fit_where():
    with pytest.raises(LabkitError) as caught:
        classroom.place(["a", "b", "c"], [room(HERE, 1), room(THERE, 1)], {})
    assert str(caught.value).startswith(
        "3 seats do not fit: the hosts have room for 2 (1 on this host, 1 on qemu+ssh://teacher@big.example.org/system)"
    )


def test_waves_are_what_the_cores_bear():
    five = [f"s{i}" for i in range(5)]
    assert classroom.waves(five, 2, NAT) == [[s] for s in five]  # 5 VMs of 1 CPU on 2 cores: one copy at once
    assert classroom.waves(five, 16, NAT) == [five[:3], five[3:]]


def test_each_seat_gets_ports_of_its_own():
    record = {"port_base": 22000, "seats": {}}
    record["seats"]["ana"] = {"ports": classroom.ports(record, NAT)}
    assert classroom.ports(record, NAT) == {node: 22005 + i for i, node in enumerate(NAT.nodes)}


def test_the_guard_lets_in_dhcp_and_replies_only():
    rules = classroom.guard_rules("virbr7", "labkit-guard:class-ana")
    assert [r[-1] for r in rules] == ["ACCEPT", "ACCEPT", "REJECT", "REJECT"]
    assert rules[0][:8] == ["-I", "INPUT", "-i", "virbr7", "-p", "udp", "--dport", "67"]
    assert all("labkit-guard:class-ana" in r for r in rules)


def test_the_students_ssh_config_reaches_their_ports_with_their_key():
    text = classroom.ssh_config("10.0.0.5", {"lb0": 22000, "rs0": 22001})
    assert "Host rs0\n  HostName 10.0.0.5\n  Port 22001\n  User vagrant\n  IdentityFile id_ed25519\n" in text
    assert text.count("IdentitiesOnly yes") == 2


def test_the_address_given_is_the_one_listened_on():
    assert classroom.address_of("10.1.2.3", THERE) == "10.1.2.3"
    assert classroom.address_of("0.0.0.0", THERE) == "big.example.org"


def test_checks_become_a_k_selection():
    assert classroom.selection(("test_lab.py::test_route_to_client[rs0]", "test_lab.py::test_x")) == (
        "(test_route_to_client and rs0) or (test_x)"
    )


def test_the_page_marks_who_is_done():
    record = {
        "lab": "nat",
        "seats": {
            "ana": {"host": HERE, "state": "up", "exercise": "nat-route-around", "checks": "1/1"},
            "ben": {"host": THERE, "state": "up", "exercise": "link-loss", "checks": "0/1"},
        },
    }
    table = classroom.rows(record, {"ben": "4/5 running"})
    assert table[2][:5] == ("ben", "qemu+ssh://teacher@big.example.org/system", "4/5 running", "link-loss", "0/1")
    html = classroom.page(record, table, 10)
    assert '<tr class="ok" data-student="ana">' in html and '<tr class="todo" data-student="ben">' in html
    assert 'http-equiv="refresh" content="10"' in html and "http" not in html.replace("http-equiv", "")


def test_a_seats_vms_trust_the_students_key_beside_labkits():
    target = Target(private_key="/k", public_key="ssh-ed25519 AAAAlabkit", student_key="ssh-ed25519 AAAAana")
    text = render(NAT, target)
    assert '"labkit-ssh-key: ssh-ed25519 AAAAlabkit", "labkit-ssh-key: ssh-ed25519 AAAAana"' in text


def test_there_are_the_exercises_a_class_needs():
    names = {f.name for f in faults.FAULTS}
    assert len(names) >= 8
    for needed in ("dr-arp", "tun-rp-filter", "nat-route-around", "weight-starves", "persistence-lost"):
        assert needed in names
    assert {"priority-never-fails-back", "sync-stopped", "link-loss"} <= names


def test_an_exercise_on_a_lab_it_does_not_fit_is_one_line():
    with pytest.raises(LabkitError, match="the exercise dr-arp does not apply to the lab nat. Those that do: "):
        faults.exercise("dr-arp", NAT)
    with pytest.raises(LabkitError, match="no exercise 'nope'"):
        faults.exercise("nope", NAT)


def test_class_commands_without_a_class_say_so(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_HOME", str(tmp_path))
    for args in (["class", "status"], ["class", "down"], ["exercise", "check", "ana"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1
        assert "no class is up" in result.output


def test_the_grade_counts_exactly_the_faults_checks():
    report = """<testsuites><testsuite tests="3">
      <testcase classname="test_lab" name="test_ipvs_table[lb0]"><failure message="x"/></testcase>
      <testcase classname="test_lab" name="test_split[tcp-192.168.55.100:80]"/>
      <testcase classname="test_lab" name="test_split[tcp-192.168.55.100:8080]"/>
    </testsuite></testsuites>"""
    checks = ("test_lab.py::test_ipvs_table[lb0]", "test_lab.py::test_split[tcp-192.168.55.100:80]")
    assert classroom.grade(report, checks) == (1, 2)
    assert classroom.grade("<testsuites/>", checks) == (0, 2)  # a check that did not run did not pass
