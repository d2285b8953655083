# timer.s - timer interrupts on a bare machine: a handler counts ticks and prints the cycle of each.
#
# The main program arms the timer, enables interrupts and spins in a busy loop for BUSY_TICKS ticks, then
# waits in wfi for the remaining ticks and halts. The handler's first five instructions are fixed: it reads
# `cycle` and re-arms the timer at once, so the ticks come at exactly predictable cycles (ISA §4, Time):
#   - the first interrupt is taken at cycle A + 1 + PERIOD, where A is the address of arm_timer / 4
#     (the code before it runs straight, one instruction per word);
#   - in the busy phase the handler re-arms at its 5th instruction, so the period is PERIOD + 5;
#   - in the wfi phase the wfi that idles until the timer expires retires one tick later: PERIOD + 6.
# Each line prints the value `mfcr cycle` read, which is one more than the cycle of the interrupt.

.equ PERIOD,        1000            # instructions between the re-arm and the next interrupt
.equ BUSY_TICKS,    3
.equ TOTAL_TICKS,   6
.equ CAUSE_TIMER,   16

start:                              # straight-line code up to arm_timer: no branches
        la      sp, stack_top
        la      r4, handler
        mtcr    ivt, r4
        addi    r4, zero, PERIOD
arm_timer:
        mtcr    timer, r4
        addi    r4, zero, 3             # supervisor mode, interrupts enabled
        mtcr    psw, r4
busy:                                   # phase 1: work while the ticks come
        addi    r10, r10, 1
        ld      r4, ticks(zero)
        slti    r4, r4, BUSY_TICKS
        bnez    r4, busy
idle:                                   # phase 2: sleep until each tick
        wfi
        ld      r4, ticks(zero)
        slti    r4, r4, TOTAL_TICKS
        bnez    r4, idle
        addi    r4, zero, 1             # interrupts off
        mtcr    psw, r4
        la      r2, s_done
        call    print_str
        ld      r2, ticks(zero)
        call    print_dec
        la      r2, s_busy
        call    print_str
        mov     r2, r10
        call    print_dec
        la      r2, s_iterations
        call    print_str
        li      r1, 0
        halt

handler:
        mtcr    scratch, r1             # these five instructions must stay first and in this order
        mfcr    r1, cycle
        st      r1, last_cycle(zero)
        addi    r1, zero, PERIOD
        mtcr    timer, r1               # next tick: PERIOD instructions from now
        la      r1, saved
        st      r2, 8(r1)
        st      r3, 12(r1)
        st      r4, 16(r1)
        st      r5, 20(r1)
        st      r6, 24(r1)
        st      r7, 28(r1)
        st      r10, 40(r1)
        st      r14, 56(r1)
        st      r15, 60(r1)
        mfcr    r2, scratch
        st      r2, 4(r1)
        la      sp, handler_stack_top
        mfcr    r4, cause
        li      r5, CAUSE_TIMER
        bne     r4, r5, unexpected
        ld      r10, ticks(zero)
        addi    r10, r10, 1
        st      r10, ticks(zero)
        la      r2, s_tick
        call    print_str
        mov     r2, r10
        call    print_dec
        la      r2, s_cycle
        call    print_str
        ld      r2, last_cycle(zero)
        call    print_dec
        call    newline
        la      r15, saved              # restore what the handler used (lib.s uses r2, r4-r7)
        ld      r1, 4(r15)
        ld      r2, 8(r15)
        ld      r3, 12(r15)
        ld      r4, 16(r15)
        ld      r5, 20(r15)
        ld      r6, 24(r15)
        ld      r7, 28(r15)
        ld      r10, 40(r15)
        ld      r14, 56(r15)
        ld      r15, 60(r15)
        iret

unexpected:
        la      r2, s_unexpected
        call    print_str
        mfcr    r2, cause
        call    print_dec
        call    newline
        li      r1, 1
        halt

s_tick:         .asciz "tick "
s_cycle:        .asciz " at cycle "
s_done:         .asciz "timer: "
s_busy:         .asciz " ticks, busy loop ran "
s_iterations:   .asciz " iterations\n"
s_unexpected:   .asciz "unexpected trap, cause "

        .include "lib.s"

        .align  4
ticks:          .word 0
last_cycle:     .word 0
saved:          .space 64
                .space 256
stack_top:
                .space 256
handler_stack_top:
