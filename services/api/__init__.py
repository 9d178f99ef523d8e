"""Generated gRPC code for the ``proto/`` sources: run ``make proto``, never edit by hand."""
