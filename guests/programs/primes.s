# Count the primes below N with the sieve of Eratosthenes and print the count (1229 for N = 10000).
# Assemble with -D REPEAT=k to sieve k times (a longer CPU-bound run with the same output).
        .ifndef N
        .equ    N, 10000
        .endif
        .ifndef REPEAT
        .equ    REPEAT, 1
        .endif

        la      sp, stack_top
        li      r12, N
again:  la      r11, sieve              # clear the flags (0 = still a prime candidate)
        add     r9, r11, r12
1:      stb     zero, 0(r11)
        addi    r11, r11, 1
        bltu    r11, r9, 1b
        la      r10, sieve
        li      r11, 2                  # i
        li      r13, 0                  # count
outer:  bgeu    r11, r12, done
        add     r4, r10, r11
        ldbu    r5, 0(r4)
        bnez    r5, next
        addi    r13, r13, 1
        mul     r6, r11, r11            # j = i * i
        bgeu    r6, r12, next
        li      r7, 1
inner:  add     r4, r10, r6             # mark every multiple from i * i on
        stb     r7, 0(r4)
        add     r6, r6, r11
        bltu    r6, r12, inner
next:   addi    r11, r11, 1
        j       outer
done:   la      r4, rounds
        ld      r5, 0(r4)
        addi    r5, r5, 1
        st      r5, 0(r4)
        li      r6, REPEAT
        bltu    r5, r6, again
        mov     r2, r13
        call    print_dec
        call    newline
        li      r1, 0
        halt

rounds: .word   0
        .include "lib.s"
        .align  4
        .space  256
stack_top:
sieve:  .space  N
