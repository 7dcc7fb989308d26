"""Faithful fakes of VBoxManage, prlctl, prlsrvctl and pyvbox (see docs/drivers.md).

The programs run as real processes through the Runner, from wrappers that tools.py
writes into a temporary bin folder; their state is a JSON file named by an environment
variable the Runner passes through.
"""
