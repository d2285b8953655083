# A system-call-heavy guest, written against the kernel's HAL (guests/kernel/hal_*.s) so that the one source
# builds for the bare machine and, with -D PARAVIRT, for the paravirtual monitor (`pv`; docs/paravirt.md).
# A user task makes COUNT system calls and adds up the answers; the kernel answers each with 42 and, at the
# exit call, prints the sum (42 * COUNT) and halts with status 0.
.ifdef PARAVIRT
        .include "../kernel/hal_pv.s"
.else
        .include "../kernel/hal_native.s"
.endif
        .ifndef COUNT
        .equ    COUNT, 1000
        .endif
        .equ    USER, 0x1000                    # the user task's region: R = (USER, 0x1000)

        la      sp, stack_top
        la      r4, handler
        HAL_SET_IVT r4
        li      r4, USER
        HAL_SET_EBASE r4
        li      r4, 0x1000
        HAL_SET_EBOUND r4
        HAL_SET_EPC zero
        HAL_SET_EPSW zero                       # user mode, interrupts off
        HAL_ENTER_USER

handler:
        HAL_GET_CAUSE r4
        li      r5, 1                           # SYSCALL
        bne     r4, r5, fault
        HAL_GET_BADADDR r4                      # the call number
        beqz    r4, exit
        li      r2, 42
        HAL_GET_EPC r4
        addi    r4, r4, 4
        HAL_SET_EPC r4
        HAL_ENTER_USER
exit:   la      r2, msg
        call    puts
        mov     r2, r3
        call    putdec
        li      r2, '\n'
        HAL_PUTC r2
        li      r1, 0
        HAL_HALT
fault:  li      r1, 1
        HAL_HALT

        .include "../kernel/hal_print.s"

msg:    .asciz  "sum of the answers: "
        .align  4
        .space  256
stack_top:

        .org    USER                            # the user task: position-independent, runs at virtual 0
        li      r10, COUNT
        li      r3, 0
1:      syscall 1
        add     r3, r3, r2
        addi    r10, r10, -1
        bnez    r10, 1b
        syscall 0
