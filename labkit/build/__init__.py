"""What a lab needs, built from the lab file and nothing else (pure): the Vagrantfile, each
node's steps, keepalived.conf, ipvsadm rules."""
