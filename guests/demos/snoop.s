# A hostile guest: it tries to read and write beyond the end of its memory (where another VM may live).
# Each access faults inside this guest; its own handler counts the faults, skips the access and goes on.
        la      sp, stack_top
        la      r2, handler
        mtcr    ivt, r2
        li      r10, 0                  # faults seen
        li      r3, 0x100000            # 1 MiB: just past the end of a 1 MiB guest
        ld      r4, 0(r3)               # read beyond the end
        li      r5, 0xDEADBEEF
        st      r5, 0(r3)               # write beyond the end
        st      r5, 0x7FF0(r3)          # and further
        li      r3, -4
        ld      r4, 0(r3)               # and at the top of the address space
        la      r2, msg
        call    print_str
        mov     r2, r10
        call    print_dec
        call    newline
        mov     r1, r10
        halt

handler:                                # count MEM faults, skip the faulting instruction
        addi    r10, r10, 1
        mfcr    r6, epc
        addi    r6, r6, 4
        mtcr    epc, r6
        iret

msg:    .asciz  "memory faults taken inside the guest: "
        .include "../programs/lib.s"
        .align  4
        .space  256
stack_top:
