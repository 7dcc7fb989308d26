"""pymachine's core: machines, their store, drivers' contract, provisioning and port forwarding.

Importing this package must stay cheap: `pymachine env` runs in every new shell.
"""

__version__ = "0.1.0"
