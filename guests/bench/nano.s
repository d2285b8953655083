# nano.s - the nanobenchmarks of the study (`popek bench`, popek/vmm/bench/nano.py): one guest, one operation.
#
# Each is the P32 analogue of a row of Adams & Agesen's nanobenchmarks (ASPLOS 2006). Build with exactly one
# of the operation names below defined, N = iterations and WITH = 1 (the loop with the operation) or 0 (the
# same loop without it); the study times both and takes (with - without) / operations as the cost of one.
#
#   SYSCALL   a user task's system call, answered by the kernel (mfcr epc; addi; mtcr epc; iret)
#   IN        the kernel reads a port that has no device (`in`): port I/O the host performs
#   MTCR      the kernel writes a control register (`mtcr scratch`)
#   MFCR      the kernel reads a control register (`mfcr scratch`)
#   CALLRET   the kernel calls an empty function (`call` + `ret`): plain code, the baseline of baselines
#   DIVZERO   a user task divides by zero; the kernel takes the trap and skips the instruction
#   RELOC     the kernel changes its relocation bound (`mtcr bound`), the analogue of a page-table write
#   TIMER     a timer interrupt taken while a user task runs; the kernel counts it and re-arms the timer
#
# Written against the kernel's HAL, so that with -D PARAVIRT it builds for the paravirtual monitor: there the
# control registers are words of the shared area and the trap return is a hypercall. IN and RELOC have no
# paravirtual analogue (a PV guest has neither ports nor a relocation it may write).
# At halt r11 holds the number of operations performed (the timer handler counts its ticks), r1 is 0.
.ifdef PARAVIRT
        .include "../kernel/hal_pv.s"
.else
        .include "../kernel/hal_native.s"
.endif
        .ifndef N
        .equ    N, 1000
        .endif
        .ifndef WITH
        .equ    WITH, 1
        .endif
        .ifndef PERIOD
        .equ    PERIOD, 200                     # instructions between two timer interrupts
        .endif
        .equ    USER, 0x2000                    # the user task's region: R = (USER, 0x1000)
        .equ    PORT, 0x30                      # a port no device answers: reads all ones
        .equ    CAUSE_SYSCALL, 1
        .equ    CAUSE_DIVZERO, 6
        .equ    CAUSE_TIMER, 16

        la      sp, stack_top
        li      r11, 0
.ifdef SYSCALL
        .equ    IN_USER, 1
.endif
.ifdef DIVZERO
        .equ    IN_USER, 1
.endif
.ifdef TIMER
        .equ    IN_USER, 1
.endif

.ifdef IN_USER
        la      r4, handler
        HAL_SET_IVT r4
        li      r4, USER
        HAL_SET_EBASE r4
        li      r4, 0x1000
        HAL_SET_EBOUND r4
        HAL_SET_EPC zero
.ifdef TIMER
        li      r12, PERIOD
  .if WITH
        HAL_TIMER_SET r12
  .endif
        li      r4, 2                           # user mode, interrupts on
        HAL_SET_EPSW r4
.else
        HAL_SET_EPSW zero                       # user mode, interrupts off
.endif
        HAL_ENTER_USER

handler:
        HAL_GET_CAUSE r4
        li      r5, CAUSE_TIMER
        beq     r4, r5, tick
        li      r5, CAUSE_DIVZERO
        beq     r4, r5, skip
        li      r5, CAUSE_SYSCALL
        bne     r4, r5, fault
        HAL_GET_BADADDR r4                      # system call 0 ends the run
        beqz    r4, done
skip:   HAL_GET_EPC r4                          # resume after the trapping instruction
        addi    r4, r4, 4
        HAL_SET_EPC r4
        HAL_ENTER_USER
tick:   addi    r11, r11, 1
        HAL_TIMER_SET r12
        HAL_ENTER_USER
fault:  li      r1, 1
        HAL_HALT

.else                                           # the operation runs in the kernel itself
        li      r10, N
  .ifdef RELOC
        mfcr    r5, bound                       # the bound alternates between all memory and 4 KiB less
  .endif
        li      r6, 0x1000
1:
  .if WITH
    .ifdef IN
        in      r2, PORT
    .endif
    .ifdef MTCR
        HAL_SCRATCH_SAVE r2
    .endif
    .ifdef MFCR
        HAL_SCRATCH_LOAD r2
    .endif
    .ifdef CALLRET
        call    empty
    .endif
    .ifdef RELOC
        mtcr    bound, r5
    .endif
  .endif
        xor     r5, r5, r6
        addi    r10, r10, -1
        bnez    r10, 1b
        li      r11, N * WITH
.endif
done:   li      r1, 0
        HAL_HALT

empty:  ret

        .align  4
        .space  256
stack_top:

.ifdef IN_USER
        .org    USER                            # the user task: runs at virtual 0
        li      r10, N
1:
  .if WITH
    .ifdef SYSCALL
        syscall 1
    .endif
    .ifdef DIVZERO
        div     r5, r6, r0
    .endif
  .endif
        addi    r10, r10, -1
        bnez    r10, 1b
  .ifndef TIMER
        li      r11, N * WITH
  .endif
        syscall 0
.endif
