"""What each node needs, as steps (each with its reason and its check), and the files and
commands they carry: keepalived.conf, ipvsadm rules and listings, the guest helpers. Pure."""
