# primes.s - the primes service (port 33): the request is n in decimal (1 to 9 ASCII digits, nothing else),
# 0 <= n <= PRIMES_MAX; the reply is the number of primes below n in decimal. Stateless and CPU-bound: a sieve
# of Eratosthenes over the odd numbers, one bit each (625,000 bytes for n = 10,000,000), at SIEVE. Its port is
# bound with BIND_CANCEL: a cancel stops it wherever it is, since it keeps nothing between requests.

.equ PRIMES_MAX,    10000000

primes_handle:                      # r2 = payload, r3 = length
    push lr
    call parse_dec
    li r4, 1
    beq r3, r4, 1f
    li r4, PRIMES_MAX
    bnez r3, 2f
    bltu r4, r2, 2f
    call primes_below
    mov r3, r2
    call reply_dec
    pop lr
    ret
1:  li r2, r_bad_number - task_image
    j 3f
2:  li r2, r_too_large - task_image
3:  call svc_text
    pop lr
    ret

parse_dec:                          # the r3 bytes at r2 in decimal: r2 <- the value, r3 <- 0, or 1 (not a
    beqz r3, 3f                     # decimal number), or 2 (more than 9 digits)
    add r6, r2, r3
    li r4, 0
    li r7, 10
1:  ldbu r5, 0(r2)
    addi r5, r5, -'0'
    bgeu r5, r7, 3f
    mul r4, r4, r7
    add r4, r4, r5
    addi r2, r2, 1
    bltu r2, r6, 1b
    li r5, 9
    bltu r5, r3, 4f
    mov r2, r4
    li r3, 0
    ret
3:  li r3, 1
    ret
4:  li r3, 2
    ret

primes_below:                       # r2 = n: r2 <- the number of primes below n
    li r3, 3
    bltu r2, r3, 9f
    shri r4, r2, 1                  # r4 = m: bit i stands for 2i + 1, so m bits hold the odd numbers below n
    addi r5, r4, 31
    shri r5, r5, 5
    li r6, SIEVE
    shli r7, r5, 2
    add r7, r7, r6                  # r7: the end of the sieve's words
    mov r8, r6
1:  st zero, 0(r8)                  # a set bit is a composite (or 1, or beyond m)
    addi r8, r8, 4
    bltu r8, r7, 1b
    li r8, 1
    st r8, 0(r6)
    andi r8, r4, 31
    beqz r8, 2f
    li r9, -1
    shl r9, r9, r8
    ld r10, -4(r7)
    or r10, r10, r9
    st r10, -4(r7)
2:  li r8, 1                        # r8 = i, the candidate p = 2i + 1
    li r1, 1
3:  shli r9, r8, 1
    addi r9, r9, 1
    mul r10, r9, r9
    bgeu r10, r2, 6f                # p * p >= n: the sieve is done
    shri r11, r8, 3
    add r11, r11, r6
    ldbu r11, 0(r11)
    andi r12, r8, 7
    shr r11, r11, r12
    andi r11, r11, 1
    bnez r11, 5f
    shri r10, r10, 1                # strike p*p, p*p + 2p, ...: bits j, j + p, ...
4:  shri r11, r10, 3
    add r11, r11, r6
    ldbu r12, 0(r11)
    andi r13, r10, 7
    shl r13, r1, r13
    or r12, r12, r13
    stb r12, 0(r11)
    add r10, r10, r9
    bltu r10, r4, 4b
5:  addi r8, r8, 1
    j 3b
6:  li r2, 1                        # the prime 2, then every clear bit
7:  ld r8, 0(r6)
    not r8, r8
8:  beqz r8, 10f
    addi r9, r8, -1
    and r8, r8, r9
    addi r2, r2, 1
    j 8b
10: addi r6, r6, 4
    bltu r6, r7, 7b
    ret
9:  li r2, 0
    ret

r_bad_number:   .asciz "ERR bad number"
r_too_large:    .asciz "ERR too large"
