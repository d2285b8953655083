# CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320) of a message, computed bit by bit; prints it in hex.
# Assemble with -D REPEAT=k to compute it k times (a longer CPU-bound run with the same output).
        .ifndef REPEAT
        .equ    REPEAT, 1
        .endif

        la      sp, stack_top
        li      r13, REPEAT
again:  la      r10, message
        la      r11, message_end
        li      r2, -1                  # crc = 0xFFFFFFFF
        li      r12, 0xEDB88320
byte:   bgeu    r10, r11, finish
        ldbu    r4, 0(r10)
        xor     r2, r2, r4
        li      r5, 8
bit:    andi    r6, r2, 1
        shri    r2, r2, 1
        beqz    r6, 1f
        xor     r2, r2, r12
1:      addi    r5, r5, -1
        bnez    r5, bit
        addi    r10, r10, 1
        j       byte
finish: not     r2, r2
        addi    r13, r13, -1
        bnez    r13, again
        call    print_hex
        call    newline
        li      r1, 0
        halt

message:
        .ascii  "The quick brown fox jumps over the lazy dog. "
        .ascii  "Pack my box with five dozen liquor jugs! 0123456789"
message_end:
        .include "lib.s"
        .align  4
        .space  256
stack_top:
