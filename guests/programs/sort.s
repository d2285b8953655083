# Sort COUNT pseudo-random words (x = x * 1103515245 + 12345, keeping bits 30..16) with insertion sort,
# check the order, and print the smallest, the largest and the checksum sum((i + 1) * a[i]) mod 2**32.
        .ifndef COUNT
        .equ    COUNT, 500
        .endif

        la      sp, stack_top
        la      r10, array
        li      r11, COUNT
        li      r12, 12345              # seed
        li      r5, 1103515245
        li      r6, 12345
        mov     r4, r10
1:      mul     r12, r12, r5            # fill the array
        add     r12, r12, r6
        shri    r7, r12, 16
        andi    r7, r7, 0x7FFF
        st      r7, 0(r4)
        addi    r4, r4, 4
        addi    r11, r11, -1
        bnez    r11, 1b

        li      r11, 1                  # insertion sort: i = 1 .. COUNT-1
outer:  li      r4, COUNT
        bgeu    r11, r4, sorted
        shli    r5, r11, 2
        add     r5, r10, r5
        ld      r6, 0(r5)               # key
        mov     r7, r5                  # hole
inner:  beq     r7, r10, place
        ld      r8, -4(r7)
        bleu    r8, r6, place
        st      r8, 0(r7)
        addi    r7, r7, -4
        j       inner
place:  st      r6, 0(r7)
        addi    r11, r11, 1
        j       outer

sorted: li      r11, 1                  # verify the order; status 1 if not sorted
        mov     r4, r10
        li      r13, 0                  # checksum
        li      r9, COUNT
2:      ld      r5, 0(r4)
        mul     r6, r5, r11
        add     r13, r13, r6
        bgeu    r11, r9, 3f
        ld      r7, 4(r4)
        bltu    r7, r5, unsorted
3:      addi    r4, r4, 4
        addi    r11, r11, 1
        bleu    r11, r9, 2b
        ld      r2, 0(r10)
        call    print_dec
        li      r4, ' '
        out     0, r4
        li      r4, (COUNT - 1) * 4
        add     r4, r10, r4
        ld      r2, 0(r4)
        call    print_dec
        li      r4, ' '
        out     0, r4
        mov     r2, r13
        call    print_dec
        call    newline
        li      r1, 0
        halt
unsorted:
        li      r1, 1
        halt

        .include "lib.s"
        .align  4
        .space  256
stack_top:
array:  .space  COUNT * 4
