"""The real-kernel harness: a stock Debian kernel under QEMU running dm-mirror tables.

Test and demo tooling (``tests/kernel``, ``make demo``, ``tools/clog-vm``); see
``spec/kernel-vm.md``.
"""

from clogfs.vm.kernel import KernelPrepareError, KernelTree, prepare_kernel
from clogfs.vm.machine import (
    PreparedVm,
    VmBootError,
    VmError,
    VmResult,
    VmTimeoutError,
    prepare,
    qemu_missing_reason,
    run_in_vm,
)

__all__ = [
    "KernelPrepareError",
    "KernelTree",
    "PreparedVm",
    "VmBootError",
    "VmError",
    "VmResult",
    "VmTimeoutError",
    "prepare",
    "prepare_kernel",
    "qemu_missing_reason",
    "run_in_vm",
]
