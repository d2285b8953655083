# lib.s - small position-independent helpers (service.s includes it). They use only registers and the stack,
# so the kernel calls the copy in its own image too (net.s), and each task the copy in its region.

umemcpy:                            # copy r4 bytes from r3 to r2 (words when both are aligned); r2 <- the end
    or r5, r2, r3
    andi r5, r5, 3
    bnez r5, 2f
1:  sltiu r5, r4, 4
    bnez r5, 2f
    ld r5, 0(r3)
    st r5, 0(r2)
    addi r2, r2, 4
    addi r3, r3, 4
    addi r4, r4, -4
    j 1b
2:  beqz r4, 3f
    ldbu r5, 0(r3)
    stb r5, 0(r2)
    addi r2, r2, 1
    addi r3, r3, 1
    addi r4, r4, -1
    j 2b
3:  ret

umemeq:                             # r2 <- 1 if the r4 bytes at r2 and r3 are equal, else 0
1:  beqz r4, 2f
    ldbu r5, 0(r2)
    ldbu r6, 0(r3)
    bne r5, r6, 3f
    addi r2, r2, 1
    addi r3, r3, 1
    addi r4, r4, -1
    j 1b
2:  li r2, 1
    ret
3:  li r2, 0
    ret

fmt_dec:                            # write r3 in decimal at r2; r2 <- its end
    addi sp, sp, -12
    addi r4, sp, 12
    li r6, 10
1:  remu r5, r3, r6
    addi r5, r5, '0'
    addi r4, r4, -1
    stb r5, 0(r4)
    divu r3, r3, r6
    bnez r3, 1b
    addi r6, sp, 12
2:  ldbu r5, 0(r4)
    stb r5, 0(r2)
    addi r2, r2, 1
    addi r4, r4, 1
    bne r4, r6, 2b
    addi sp, sp, 12
    ret
