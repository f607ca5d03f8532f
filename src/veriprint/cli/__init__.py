"""The ``veriprint`` command line: one module per subcommand, each a thin call into the library."""
