# vmm.s - the native hypervisor with its default guests (docs/vmm-native.md):
#   popek run guests/vmm/vmm.s                 two guest kernels under the monitor
#   popek run guests/vmm/vmm.s -D NESTED       the monitor under itself: vm1 is this file's default build
#
# Each guest's console lines come out tagged "vmN | "; the monitor's own lines "vmm | ".

.include "monitor.s"

.equ KERNEL_MEM,    0x14000         # the guest kernel runs in any machine of 0x13000 bytes or more

.ifdef NESTED
    # vm1: this monitor with its two kernels (its 64 KiB and their two regions); vm2: a kernel beside it
    GUEST 1, "vmm.s", VMM_SIZE + 2 * KERNEL_MEM
    GUEST 2, "../kernel/kernel.s", KERNEL_MEM
.else
    GUEST 1, "../kernel/kernel.s", KERNEL_MEM
    GUEST 2, "../kernel/kernel.s", KERNEL_MEM, "CRASH"   # the build whose task 2 is killed
.endif
GUESTS_END
