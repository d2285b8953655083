# kv.s - the key-value store (port 34): keys of 1 to 64 bytes (no newline) to values of at most 4096 bytes,
# KV_SLOTS of them, kept in the task's memory at KV_BASE. Stateful: in the concurrent design one worker owns it.
#   PUT <key>\n<value>   ->  STORED | ERR full | ERR bad key | ERR value too long | ERR bad request
#   GET <key>            ->  FOUND\n<value> | NOTFOUND | ERR bad key
#   DELETE <key>         ->  DELETED | NOTFOUND | ERR bad key
# anything else          ->  ERR bad request

.equ KV_SLOTS,      64
.equ KV_KEY_MAX,    64
.equ KV_VAL_MAX,    4096
.equ KV_VLEN,       4               # a slot: key length (0: free), value length, key, value
.equ KV_KEY,        8
.equ KV_VAL,        KV_KEY + KV_KEY_MAX
.equ KV_SLOT,       KV_VAL + KV_VAL_MAX
.equ KV_PUT,        0x20545550      # "PUT ", "GET ", "DELE" as little-endian words
.equ KV_GET,        0x20544547
.equ KV_DELE,       0x454C4544

kv_handle:                          # r2 = payload (word aligned), r3 = length
    push lr
    li r4, 4
    bltu r3, r4, kv_bad
    ld r4, 0(r2)
    li r5, KV_PUT
    beq r4, r5, kv_put
    addi r10, r2, 4                 # GET and DELETE: the key is the rest
    addi r11, r3, -4
    li r5, KV_GET
    beq r4, r5, kv_get
    li r5, KV_DELE
    bne r4, r5, kv_bad
    li r5, 7
    bltu r3, r5, kv_bad
    ldbu r4, 4(r2)
    li r5, 'T'
    bne r4, r5, kv_bad
    ldbu r4, 5(r2)
    li r5, 'E'
    bne r4, r5, kv_bad
    ldbu r4, 6(r2)
    li r5, ' '
    bne r4, r5, kv_bad
    addi r10, r2, 7
    addi r11, r3, -7
    call kv_key
    beqz r2, kv_bad_key
    bnez r3, 1f
    li r2, r_notfound - task_image
    j kv_text
1:  st zero, 0(r3)                  # the slot is free again
    li r2, r_deleted - task_image
    j kv_text

kv_get:
    call kv_key
    beqz r2, kv_bad_key
    bnez r3, 1f
    li r2, r_notfound - task_image
    j kv_text
1:  mov r10, r3
    li r2, S_REP
    li r3, r_found - task_image
    li r4, 6
    call umemcpy
    addi r3, r10, KV_VAL
    ld r4, KV_VLEN(r10)
    call umemcpy
    li r3, S_REP
    sub r3, r2, r3
    li r2, S_REP
    pop lr
    ret

kv_put:                             # the key ends at the first newline; the value is the rest
    addi r10, r2, 4
    add r12, r2, r3                 # r12: the end of the payload
    mov r4, r10
1:  bgeu r4, r12, kv_bad            # no newline
    ldbu r5, 0(r4)
    addi r4, r4, 1
    li r6, '\n'
    bne r5, r6, 1b
    sub r11, r4, r10
    addi r11, r11, -1               # the key's length
    mov r9, r4                      # r9: the value, r12 - r9 bytes
    sub r8, r12, r9
    li r5, KV_VAL_MAX
    bltu r5, r8, kv_too_long
    push r9
    push r8
    call kv_key
    pop r8
    pop r9
    beqz r2, kv_bad_key
    bnez r3, 2f
    beqz r4, kv_full                # a new key, and no room
    mov r3, r4
    st r11, 0(r3)                   # take the free slot: its key
    push r3
    push r8
    push r9
    addi r2, r3, KV_KEY
    mov r3, r10
    mov r4, r11
    call umemcpy
    pop r9
    pop r8
    pop r3
2:  st r8, KV_VLEN(r3)
    addi r2, r3, KV_VAL
    mov r3, r9
    mov r4, r8
    call umemcpy
    li r2, r_stored - task_image
    j kv_text

kv_key:                             # the r11-byte key at r10: r2 <- 1 if it is valid, else 0; r3 <- its slot or 0;
    beqz r11, 1f                    # r4 <- a free slot or 0
    li r4, KV_KEY_MAX
    bltu r4, r11, 1f
    push lr
    mov r2, r10
    mov r3, r11
    li r4, KV_BASE
    li r5, KV_SLOTS
    li r6, KV_SLOT
    call tfind
    mov r4, r3
    mov r3, r2
    li r2, 1
    pop lr
    ret
1:  li r2, 0
    ret

kv_bad:
    li r2, r_bad_request - task_image
    j kv_text
kv_bad_key:
    li r2, r_bad_key - task_image
    j kv_text
kv_too_long:
    li r2, r_too_long - task_image
    j kv_text
kv_full:
    li r2, r_full - task_image
kv_text:
    call svc_text
    pop lr
    ret

r_stored:       .asciz "STORED"
r_found:        .ascii "FOUND\n"
r_notfound:     .asciz "NOTFOUND"
r_deleted:      .asciz "DELETED"
r_full:         .asciz "ERR full"
r_bad_key:      .asciz "ERR bad key"
r_too_long:     .asciz "ERR value too long"
r_bad_request:  .asciz "ERR bad request"
