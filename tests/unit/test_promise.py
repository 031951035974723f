import pytest

from labkit.verify.checks.promise import takeout_bound

CONF = """\
virtual_server 192.168.55.100 80 {
    delay_loop 1
    real_server 192.168.66.111 80 {
        HTTP_GET {
            connect_timeout 2
            retry 1
            delay_before_retry 1
        }
    }
    real_server 192.168.66.112 80 {
        HTTP_GET {
            connect_timeout 3
            retry 2
            delay_before_retry 1
        }
    }
}
"""


def test_the_bound_is_the_slowest_servers_checks_all_timing_out():
    # delay_loop 1 + 3 attempts of 3 s + 2 retries waiting 1 s
    assert takeout_bound(CONF) == 1 + 3 * 3 + 2 * 1


def test_a_conf_without_checks_has_no_bound():
    with pytest.raises(ValueError, match="sets no connect_timeout"):
        takeout_bound("virtual_server 192.168.55.100 80 {\n    delay_loop 1\n}\n")
