# crc32.s - the crc32 service (port 32): the reply is zlib's CRC-32 of the payload as exactly 8 lowercase hex
# digits. Stateless and CPU-bound (ten instructions a byte, with a table the task builds on first use).

.equ CRC_POLY,      0xEDB88320      # the reflected polynomial of zlib (and Ethernet)

crc32_handle:                       # r2 = payload, r3 = length
    push lr
    mov r10, r2
    add r11, r2, r3
    call crc_table
    li r4, -1
1:  beq r10, r11, 2f
    ldbu r5, 0(r10)
    xor r5, r5, r4
    andi r5, r5, 255
    shli r5, r5, 2
    ld r5, S_CRC_TABLE(r5)
    shri r4, r4, 8
    xor r4, r4, r5
    addi r10, r10, 1
    j 1b
2:  not r4, r4
    li r2, S_REP
    li r6, 28
3:  shr r7, r4, r6
    andi r7, r7, 15
    li r8, crc_hex - task_image
    add r8, r8, r7
    ldbu r7, 0(r8)
    stb r7, 0(r2)
    addi r2, r2, 1
    addi r6, r6, -4
    bge r6, zero, 3b
    li r2, S_REP
    li r3, 8
    pop lr
    ret

crc_table:                          # build the table of the CRC of every byte, once
    ld r4, V_CRC_READY(zero)
    bnez r4, 9f
    li r8, CRC_POLY
    li r4, 0
1:  mov r5, r4
    li r6, 8
2:  andi r7, r5, 1
    shri r5, r5, 1
    beqz r7, 3f
    xor r5, r5, r8
3:  addi r6, r6, -1
    bnez r6, 2b
    shli r7, r4, 2
    st r5, S_CRC_TABLE(r7)
    addi r4, r4, 1
    li r7, 256
    bltu r4, r7, 1b
    li r4, 1
    st r4, V_CRC_READY(zero)
9:  ret

crc_hex:        .ascii "0123456789abcdef"
