# kernel.s - a small preemptive multitasking kernel for P32 (see README.md in this directory).
#
# It boots at address 0 in supervisor mode, copies one position-independent task program into three
# relocated regions, and runs the three tasks round robin on the timer until all have exited. Every
# privileged or sensitive instruction goes through the HAL macros, so the same source builds for the bare
# machine (hal_native.s) and, with -D PARAVIRT, for a monitor's hypercall interface (hal_pv.s).

.ifdef PARAVIRT
    .include "hal_pv.s"
.else
    .include "hal_native.s"
.endif
    .include "frame.s"

.equ NTASKS,        3
.equ QUANTUM,       500             # instructions per time slice (one timer tick)
.equ REGION0,       0x10000         # physical address of task 1's region; task n's follows task n-1's
.equ REGION_SIZE,   0x1000          # bytes per region: the task's bound
.equ USER_PSW,      2               # user mode, interrupts enabled
.equ SLEEP_TICKS,   3               # how long task 3 sleeps after each line

# Task control block: the saved registers r1..r15 at 4*n, then the rest of the task's context.
.equ TCB_STATE,     0               # FREE, READY or SLEEPING (the slot of r0, which needs no saving)
.equ TCB_SP,        56              # saved r14
.equ TCB_PC,        64
.equ TCB_BASE,      68
.equ TCB_BOUND,     72
.equ TCB_WAKE,      76              # tick at which a sleeping task becomes ready
.equ TCB_SHIFT,     7
.equ TCB_SIZE,      1 << TCB_SHIFT
.equ FREE,          0
.equ READY,         1
.equ SLEEPING,      2

# System calls: `syscall N`, arguments in r2 and r3, result in r2.
.equ SYS_EXIT,      0               # r2 = status; does not return
.equ SYS_WRITE,     1               # r2 = virtual address, r3 = length; returns length, or -1
.equ SYS_GETPID,    2               # returns the pid (1..NTASKS)
.equ SYS_YIELD,     3               # give up the rest of the time slice
.equ SYS_SLEEP,     4               # r2 = timer ticks to sleep

.equ CAUSE_SYSCALL, 1
.equ CAUSE_TIMER,   16
.equ CAUSE_DEVICE,  17

.ifdef SERVER                       # the server build: services as tasks, the network card (net.s)
    .include "netdefs.s"
.endif

# --- boot ------------------------------------------------------------------------------------------------
boot:
    HAL_IRQ_DISABLE r4
    la sp, kstack_top
    la r4, trap_entry
    HAL_SET_IVT r4
    la r2, s_boot
    call kputs
    li r2, NTASKS
    call kputdec
    la r2, s_tasks
    call kputs
.ifdef SERVER
    j server_boot
.endif
    la r10, tasks                   # r10: the TCB being set up
    li r11, REGION0                 # r11: its region
1:  st r11, TCB_BASE(r10)
    li r4, REGION_SIZE
    st r4, TCB_BOUND(r10)
    st r4, TCB_SP(r10)              # the user stack starts at the top of the region
    li r4, READY
    st r4, TCB_STATE(r10)
    la r4, task_image               # copy the task program to the start of the region (pc 0)
    la r5, task_image_end
    mov r6, r11
2:  ld r7, 0(r4)
    st r7, 0(r6)
    addi r4, r4, 4
    addi r6, r6, 4
    bltu r4, r5, 2b
    li r4, REGION_SIZE
    add r11, r11, r4
    addi r10, r10, TCB_SIZE
    la r4, tasks_end
    bltu r10, r4, 1b
    la r13, tasks
    j switch_to

# --- trap entry: save the task's registers in its TCB, then dispatch on the cause ------------------------
trap_entry:
    HAL_SCRATCH_SAVE r15
    la r15, current
    ld r15, 0(r15)                  # r15: the TCB of the task that trapped
    FRAME_SAVE_R1_R14 r15
    HAL_SCRATCH_LOAD r1
    st r1, 60(r15)
    HAL_GET_EPC r1
    st r1, TCB_PC(r15)
    mov r13, r15                    # r13: the current TCB, in all of the kernel
    la sp, kstack_top
    HAL_GET_EPSW r4
    andi r4, r4, 1
    bnez r4, panic                  # a trap in the kernel itself
    HAL_GET_CAUSE r4
    li r5, CAUSE_TIMER
    beq r4, r5, on_timer
    li r5, CAUSE_SYSCALL
    beq r4, r5, on_syscall
.ifdef SERVER
    li r5, CAUSE_DEVICE
    beq r4, r5, on_device
.endif
    call kput_task                  # any other trap kills the task
    la r2, s_killed
    call kputs
    HAL_GET_CAUSE r2
    call kputdec
    la r2, s_badaddr
    call kputs
    HAL_GET_BADADDR r2
    call kputhex
    la r2, s_pc
    call kputs
    ld r2, TCB_PC(r13)
    call kputhex
    li r2, '\n'
    call kputc
    j reap

panic:
    la r2, s_panic
    call kputs
    HAL_GET_CAUSE r2
    call kputdec
    li r2, '\n'
    call kputc
.ifdef SERVER
    call server_panic_hint
.endif
    li r1, 255
    HAL_HALT

on_timer:
    call tick
.ifdef SERVER
    call on_tick_net
.endif
    j schedule

# --- system calls ----------------------------------------------------------------------------------------
on_syscall:
    ld r4, TCB_PC(r13)
    addi r4, r4, 4
    st r4, TCB_PC(r13)              # return after the syscall instruction
    HAL_GET_BADADDR r4              # the call number
    ld r2, 8(r13)                   # the arguments: the task's r2 and r3
    ld r3, 12(r13)
    beqz r4, sys_exit
    li r5, SYS_WRITE
    beq r4, r5, sys_write
    li r5, SYS_GETPID
    beq r4, r5, sys_getpid
    li r5, SYS_YIELD
    beq r4, r5, schedule
    li r5, SYS_SLEEP
    beq r4, r5, sys_sleep
.ifdef SERVER
    li r5, SYS_BIND
    bgeu r4, r5, net_syscall
.endif
    li r2, -1                       # no such call
return_r2:
    st r2, 8(r13)
    j resume

sys_write:                          # the buffer must lie inside the task's region
    ld r4, TCB_BOUND(r13)
    bltu r4, r3, 3f                 # length > bound
    sub r4, r4, r3
    bltu r4, r2, 3f                 # address > bound - length
    ld r4, TCB_BASE(r13)
    add r10, r4, r2                 # translate: physical = base + virtual
    add r11, r10, r3
    mov r12, r3
    HAL_CONS_WRITE r10, r11, r2
    mov r2, r12
    j return_r2
3:  li r2, -1
    j return_r2

sys_getpid:
    call pid_of
    j return_r2

sys_sleep:
    la r4, ticks
    ld r4, 0(r4)
    add r4, r4, r2
    st r4, TCB_WAKE(r13)
    li r4, SLEEPING
    st r4, TCB_STATE(r13)
    j schedule

sys_exit:
    mov r10, r2
    call kput_task
    la r2, s_exited
    call kputs
    mov r2, r10
    call kputdec
    li r2, '\n'
    call kputc
reap:
.ifdef SERVER
    call net_task_gone
.endif
    st zero, TCB_STATE(r13)         # FREE
    j schedule

# --- time and scheduling ---------------------------------------------------------------------------------
tick:                               # count a timer tick and wake the sleepers that are due
    la r4, ticks
    ld r5, 0(r4)
    addi r5, r5, 1
    st r5, 0(r4)
    la r6, tasks
    la r7, tasks_end
    li r9, SLEEPING
1:  ld r8, TCB_STATE(r6)
    bne r8, r9, 2f
    ld r8, TCB_WAKE(r6)
    bltu r5, r8, 2f
    li r8, READY
    st r8, TCB_STATE(r6)
2:  addi r6, r6, TCB_SIZE
    bltu r6, r7, 1b
    ret

schedule:                           # run the next ready task after r13, round robin
    mov r10, r13
    li r11, NTASKS
    la r12, tasks_end
1:  addi r10, r10, TCB_SIZE
    bltu r10, r12, 2f
    la r10, tasks
2:  ld r4, TCB_STATE(r10)
    li r5, READY
    beq r4, r5, 3f
    addi r11, r11, -1
    bnez r11, 1b
    la r4, tasks                    # nobody is ready: idle if somebody sleeps, else shut down
4:  ld r5, TCB_STATE(r4)
    bnez r5, idle
    addi r4, r4, TCB_SIZE
    bltu r4, r12, 4b
    j shutdown
3:  mov r13, r10
switch_to:                          # give task r13 a new time slice
    li r4, QUANTUM
    HAL_TIMER_SET r4
resume:                             # return to task r13
    la r4, current
    st r13, 0(r4)
    ld r4, TCB_BASE(r13)
    HAL_SET_EBASE r4
    ld r4, TCB_BOUND(r13)
    HAL_SET_EBOUND r4
    ld r4, TCB_PC(r13)
    HAL_SET_EPC r4
    li r4, USER_PSW
    HAL_SET_EPSW r4
    mov r15, r13
    FRAME_LOAD_R1_R13 r15
    ld r14, 56(r15)
    ld r15, 60(r15)
    HAL_ENTER_USER

idle:                               # wait for the next tick with interrupts off, then reschedule
.ifdef SERVER
    j server_idle
.endif
    li r4, QUANTUM
    HAL_TIMER_SET r4
    HAL_WFI
    la r4, idle_ticks
    ld r5, 0(r4)
    addi r5, r5, 1
    st r5, 0(r4)
    call tick
    j schedule

shutdown:
    la r2, s_shutdown
    call kputs
    la r2, ticks
    ld r2, 0(r2)
    call kputdec
    la r2, s_ticks
    call kputs
    la r2, idle_ticks
    ld r2, 0(r2)
    call kputdec
    la r2, s_idle
    call kputs
    li r1, 0
    HAL_HALT

# --- console output (r2 = argument; clobbers r2, r4-r7) --------------------------------------------------
kputc:
    HAL_PUTC r2
    ret

kputs:                              # a NUL-terminated string
    mov r4, r2
1:  ldbu r2, 0(r4)
    beqz r2, 2f
    HAL_PUTC r2
    addi r4, r4, 1
    j 1b
2:  ret

kputdec:                            # an unsigned number in decimal
    addi sp, sp, -12
    addi r4, sp, 12
    li r6, 10
1:  remu r5, r2, r6
    addi r5, r5, '0'
    addi r4, r4, -1
    stb r5, 0(r4)
    divu r2, r2, r6
    bnez r2, 1b
    addi r6, sp, 12
2:  ldbu r5, 0(r4)
    HAL_PUTC r5
    addi r4, r4, 1
    bne r4, r6, 2b
    addi sp, sp, 12
    ret

kputhex:                            # 0x and eight hex digits
    mov r4, r2
    li r2, '0'
    HAL_PUTC r2
    li r2, 'x'
    HAL_PUTC r2
    li r5, 28
1:  shr r6, r4, r5
    andi r6, r6, 15
    la r7, hexdigits
    add r7, r7, r6
    ldbu r6, 0(r7)
    HAL_PUTC r6
    addi r5, r5, -4
    bge r5, zero, 1b
    ret

pid_of:                             # r2 <- the pid of TCB r13
    la r4, tasks
    sub r2, r13, r4
    shri r2, r2, TCB_SHIFT
    addi r2, r2, 1
    ret

kput_task:                          # "[kernel] task <pid of TCB r13>"
    mov r9, lr
    la r2, s_task
    call kputs
    call pid_of
    mov lr, r9
    j kputdec                       # tail call

# --- kernel data -----------------------------------------------------------------------------------------
s_boot:     .asciz "[kernel] starting "
s_tasks:    .asciz " tasks\n"
s_task:     .asciz "[kernel] task "
s_exited:   .asciz " exited with status "
s_killed:   .asciz " killed: cause "
s_badaddr:  .asciz ", badaddr "
s_pc:       .asciz ", pc "
s_panic:    .asciz "[kernel] panic: trap in the kernel, cause "
s_shutdown: .asciz "[kernel] all tasks exited after "
s_ticks:    .asciz " ticks ("
s_idle:     .asciz " idle)\n"
hexdigits:  .ascii "0123456789abcdef"

    .align 4
current:    .word tasks             # TCB of the running task (task 1 until the first switch)
ticks:      .word 0
idle_ticks: .word 0
tasks:      .space NTASKS * TCB_SIZE
tasks_end:
            .space 256
.ifdef SERVER
            .space 768
.endif
kstack_top:

.ifdef SERVER
    .include "net.s"

# --- the service program, copied into every region ----------------------------------------------------------
    .align 4
task_image:
    .include "../servers/service.s"
    .align 4
task_image_end:
.else
# --- the task program, copied into every region ----------------------------------------------------------
    .align 4
task_image:
    .include "task.s"
    .align 4
task_image_end:
.endif
