"""Running a lab: its VMs (Vagrant), its nodes (SSH), its checks (pytest)."""
