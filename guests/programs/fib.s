# Fibonacci: the first 20 numbers iteratively, then fib(N) by naive recursion (a call-heavy workload).
        .ifndef N
        .equ    N, 20
        .endif

        la      sp, stack_top
        li      r10, 0                  # a
        li      r11, 1                  # b
        li      r12, 20
1:      mov     r2, r10
        call    print_dec
        li      r4, ' '
        out     0, r4
        add     r13, r10, r11
        mov     r10, r11
        mov     r11, r13
        addi    r12, r12, -1
        bnez    r12, 1b
        call    newline
        la      r2, label
        call    print_str
        li      r2, N
        call    fib
        call    print_dec
        call    newline
        li      r1, 0
        halt

# fib: r2 = fib(r2), recursively.
fib:    sltiu   r4, r2, 2
        bnez    r4, 1f
        push    lr
        push    r10
        push    r11
        mov     r10, r2
        addi    r2, r2, -1
        call    fib
        mov     r11, r2
        addi    r2, r10, -2
        call    fib
        add     r2, r2, r11
        pop     r11
        pop     r10
        pop     lr
1:      ret

label:  .asciz  "fib(N) = "
        .include "lib.s"
        .align  4
        .space  1024
stack_top:
