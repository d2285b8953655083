# A timer-heavy guest: a busy loop of WORK iterations, interrupted every PERIOD instructions by a short
# handler that counts the tick and re-arms the timer. Prints the number of ticks; the count follows from
# the ISA's time rules, so every monitor must print the same number.
        .ifndef PERIOD
        .equ    PERIOD, 200
        .endif
        .ifndef WORK
        .equ    WORK, 20000
        .endif

        la      sp, stack_top
        la      r4, handler
        mtcr    ivt, r4
        li      r12, PERIOD
        mtcr    timer, r12
        li      r4, 3                           # supervisor, interrupts on
        mtcr    psw, r4
        li      r10, WORK
1:      addi    r10, r10, -1
        bnez    r10, 1b
        li      r4, 1                           # interrupts off
        mtcr    psw, r4
        la      r2, msg
        call    print_str
        mov     r2, r11
        call    print_dec
        call    newline
        li      r1, 0
        halt

handler:                                        # r11 counts ticks; r12 holds the period
        addi    r11, r11, 1
        mtcr    timer, r12
        iret

msg:    .asciz  "timer ticks: "
        .include "lib.s"
        .align  4
        .space  256
stack_top:
