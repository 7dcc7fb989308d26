"""The hypervisor drivers, one module or small package each, registered under the
entry-point group `pymachine.drivers` and imported only when selected."""
