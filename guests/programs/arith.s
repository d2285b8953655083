# A tight arithmetic loop: a xorshift generator mixed with multiply, add and compare, ROUNDS times.
# Prints the final value in hex; the value is checked against Python in the tests.
        .ifndef ROUNDS
        .equ    ROUNDS, 100000
        .endif

        la      sp, stack_top
        li      r2, 0x12345678          # x
        li      r10, ROUNDS
        li      r11, 0x9E3779B1
        li      r12, 0                  # accumulator
1:      shli    r4, r2, 13              # xorshift32
        xor     r2, r2, r4
        shri    r4, r2, 17
        xor     r2, r2, r4
        shli    r4, r2, 5
        xor     r2, r2, r4
        mul     r5, r2, r11
        add     r12, r12, r5
        sltu    r6, r12, r5             # carry out of the addition
        add     r12, r12, r6
        addi    r10, r10, -1
        bnez    r10, 1b
        mov     r2, r12
        call    print_hex
        call    newline
        li      r1, 0
        halt

        .include "lib.s"
        .align  4
        .space  256
stack_top:
