"""labkit: Linux Virtual Server labs on real virtual machines."""
