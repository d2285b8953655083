# task.s - the guest kernel's task program (guests/kernel/task.s), unchanged, as a process of its own:
#   popek run --process guests/process/task.s
# The task reads the kernel's constants and takes its data addresses relative to task_image, so this file
# gives it those and puts task_image at address 0, where the process VM starts it.

.include "abi.s"
.equ SLEEP_TICKS,   3               # as in guests/kernel/kernel.s
.equ REGION_SIZE,   0x1000

task_image:
.include "../kernel/task.s"
