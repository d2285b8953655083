# console.s - an output-bound guest for the study (`popek bench`): COUNT lines of 31 bytes to the console.
#
# Written against the kernel's HAL: natively each byte is an `out` (which the host performs), with
# -D PARAVIRT it is a store into the shared console buffer, written out by one hypercall per 256 bytes.
.ifdef PARAVIRT
        .include "../kernel/hal_pv.s"
.else
        .include "../kernel/hal_native.s"
.endif
        .ifndef COUNT
        .equ    COUNT, 100
        .endif
        li      r10, COUNT
1:      la      r3, line
2:      ldbu    r2, 0(r3)
        beqz    r2, 3f
        HAL_PUTC r2
        addi    r3, r3, 1
        j       2b
3:      addi    r10, r10, -1
        bnez    r10, 1b
        li      r1, 0
        HAL_HALT
line:   .asciz  "the quick brown fox jumps over\n"
