# A system-call-heavy guest: a user task makes COUNT system calls and adds up the answers; the kernel
# answers each call with 42 and, at the exit call, prints the sum (42 * COUNT) and halts with status 0.
        .ifndef COUNT
        .equ    COUNT, 1000
        .endif
        .equ    USER, 0x1000                    # the user task's region: R = (USER, 0x1000)

        la      sp, stack_top
        la      r4, handler
        mtcr    ivt, r4
        li      r4, USER
        mtcr    ebase, r4
        li      r4, 0x1000
        mtcr    ebound, r4
        mtcr    epc, zero
        mtcr    epsw, zero                      # user mode, interrupts off
        iret

handler:
        mfcr    r4, cause
        li      r5, 1                           # SYSCALL
        bne     r4, r5, fault
        mfcr    r4, badaddr                     # the call number
        beqz    r4, exit
        li      r2, 42
        mfcr    r4, epc
        addi    r4, r4, 4
        mtcr    epc, r4
        iret
exit:   la      r2, msg
        call    print_str
        mov     r2, r3
        call    print_dec
        call    newline
        li      r1, 0
        halt
fault:  li      r1, 1
        halt

msg:    .asciz  "sum of the answers: "
        .include "lib.s"
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
