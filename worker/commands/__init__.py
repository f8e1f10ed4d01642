"""The commands and their composition root: the command line (`cli`), the daemon,
`--replay`, `--check`, `--explain`, and `connect`, which wires settings, clock,
metrics and the sidecar client for all of them."""
