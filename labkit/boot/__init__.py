"""Booting a lab: the libvirt host, its room, Vagrant, the names of what a lab makes there."""
