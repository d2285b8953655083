# session.s - the session service (port 35): the payload is a client's identifier (1 to 32 bytes); the reply is
# how many requests that client has made, in decimal (1 on its first visit). Stateful per client: SESSION_MAX
# counters kept at SESSION_BASE; in the concurrent design one worker owns them.
#   <client id>   ->  <count> | ERR full | ERR bad client id

.equ SESSION_MAX,   256
.equ SESSION_ID_MAX, 32
.equ SESSION_ENTRY, 8 + SESSION_ID_MAX   # id length (0: free), count, id

session_handle:                     # r2 = payload, r3 = length
    push lr
    beqz r3, 3f
    li r4, SESSION_ID_MAX
    bltu r4, r3, 3f
    mov r10, r2
    mov r11, r3
    li r4, SESSION_BASE
    li r5, SESSION_MAX
    li r6, SESSION_ENTRY
    call tfind
    bnez r2, 2f
    beqz r3, 4f                     # a new client, and no room
    st r11, 0(r3)
    st zero, 4(r3)
    addi r2, r3, 8
    mov r3, r10
    mov r4, r11
    call umemcpy
    sub r2, r2, r11
    addi r2, r2, -8
2:  ld r3, 4(r2)
    addi r3, r3, 1
    st r3, 4(r2)
    call reply_dec
    pop lr
    ret
3:  li r2, r_bad_client - task_image
    j 5f
4:  li r2, r_session_full - task_image
5:  call svc_text
    pop lr
    ret

r_bad_client:   .asciz "ERR bad client id"
r_session_full: .asciz "ERR full"
