# Console printing for bare programs. Calling convention: arguments in r2, r3; result in r2;
# r4-r9 are scratch; r10-r13 are preserved; sp = r14, lr = r15. Include it after your code.

# print_str: print the NUL-terminated string at r2.
print_str:
        ldbu    r4, 0(r2)
        beqz    r4, 1f
        out     0, r4
        addi    r2, r2, 1
        j       print_str
1:      ret

# print_dec: print r2 as an unsigned decimal number.
print_dec:
        addi    sp, sp, -12             # room for 10 digits
        addi    r5, sp, 12              # r5 = end of the buffer; digits are written backwards
        li      r6, 10
1:      remu    r7, r2, r6
        divu    r2, r2, r6
        addi    r7, r7, '0'
        addi    r5, r5, -1
        stb     r7, 0(r5)
        bnez    r2, 1b
        addi    r6, sp, 12
2:      ldbu    r7, 0(r5)
        out     0, r7
        addi    r5, r5, 1
        bltu    r5, r6, 2b
        addi    sp, sp, 12
        ret

# print_hex: print r2 as 0x followed by 8 hexadecimal digits.
print_hex:
        li      r4, '0'
        out     0, r4
        li      r4, 'x'
        out     0, r4
        li      r5, 28                  # shift of the next digit
1:      shr     r6, r2, r5
        andi    r6, r6, 15
        slti    r7, r6, 10
        bnez    r7, 2f
        addi    r6, r6, 'a' - '0' - 10
2:      addi    r6, r6, '0'
        out     0, r6
        addi    r5, r5, -4
        bge     r5, zero, 1b
        ret

# newline: print a line feed.
newline:
        li      r4, '\n'
        out     0, r4
        ret
