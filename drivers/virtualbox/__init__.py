"""The VirtualBox driver (registered as `virtualbox`); see driver.py.

    driver.py      the Driver: NAT rules, state mapping, port probing, backend choice
    backend.py     what both backends share (NatRule, VMInfo, VBoxFailure, retries)
    vboxmanage.py  VirtualBox through VBoxManage and the injected Runner
    api.py         VirtualBox through pyvbox, when the SDK's vboxapi imports
"""

from .driver import VirtualBoxDriver, VirtualBoxOptions

__all__ = ["VirtualBoxDriver", "VirtualBoxOptions"]
