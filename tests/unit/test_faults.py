"""The fault catalogue: each fault names checks that exist on every shipped lab it applies to."""

import pytest
from conftest import pinned

from labkit.labfile import LABS, load_lab
from labkit.operate.faults import FAULTS, applying_to

LAB_NAMES = sorted(p.name for p in LABS.iterdir() if (p / "lab.yaml").exists())


@pytest.mark.parametrize("lab", LAB_NAMES)
def test_every_fault_names_checks_verify_runs_on_the_lab(lab):
    checks = pinned(lab)
    for fault in applying_to(load_lab(LABS / lab / "lab.yaml")):
        assert set(fault.catches) <= set(checks), f"{fault.name} on {lab}"
        assert not any(checks[c] for c in fault.catches), "a fault is caught by the plain checks, not a scenario"


def test_each_fault_applies_to_some_lab_and_has_words_for_the_student():
    labs = [load_lab(LABS / name / "lab.yaml") for name in LAB_NAMES]
    assert len({f.name for f in FAULTS}) == len(FAULTS)
    for fault in FAULTS:
        assert any(fault in applying_to(lab) for lab in labs), fault.name
        assert fault.symptom and fault.hint and fault.explanation
    # forwarding-specific faults stay with their forwarding
    assert [f.name for f in applying_to(labs[LAB_NAMES.index("dr")]) if f.name.startswith(("nat-", "tun-"))] == []
