"""Fault tests: each injects a fault for real and checks that nothing is lost, no
traceback is printed, no process is left, and the one-line message names the next command."""
