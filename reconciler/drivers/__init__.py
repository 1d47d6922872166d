"""Everything that writes to the kernel.

kernel.py defines the narrow interface (namespace-addressed netlink primitives
plus the few files netapply manages); netlink.py implements it on the real
kernel with pyroute2; ops.py turns a planned change into primitive calls and
is shared by every implementation of the interface.
"""
