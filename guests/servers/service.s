# service.s - the program every task of the server kernel runs (kernel.s includes it, with -D SERVER, between
# task_image and task_image_end; guests/servers/README.md describes the designs, the formats and the map).
#
# The kernel copies it to the start of each task's region and starts it at virtual address 0 with its role in
# r2, so it is position-independent: jumps and calls are pc-relative, and data addresses are offsets from
# task_image (`li rX, label - task_image`), never `la`. Each service is one file with one entry,
# NAME_handle: r2 = the request's payload (virtual address), r3 = its length; it returns r2 = the reply's
# address and r3 = its length, and may change any register but sp.

# --- the task's virtual memory map (the region sizes in netdefs.s cover what each role uses) -----------------
.equ S_CODE_MAX,    0x7000          # this program lies below
.equ S_VARS,        0x7000          # the task's variables (below 0x8000: addressed from r0)
.equ V_W_POOL1,     S_VARS + 0      # the workers' ports, for the dispatcher
.equ V_W_POOL2,     S_VARS + 4
.equ V_W_KV,        S_VARS + 8
.equ V_W_SESSION,   S_VARS + 12
.equ V_CRC_READY,   S_VARS + 16     # the CRC table is built
.equ S_CRC_TABLE,   0x7400          # 256 words
.equ S_REQ,         0x8000          # the request as recv writes it: the header, then MSG_MAX bytes
.equ S_REP,         0xA400          # a reply is composed here (MSG_MAX bytes)
.equ S_STACK_TOP,   0x10000
.equ SESSION_BASE,  0x10000         # the session table (session.s)
.equ KV_BASE,       0x14000         # the kv store (kv.s)
.equ SIEVE,         0x60000         # the prime sieve (primes.s)

svc_start:
    li sp, S_STACK_TOP
    li r4, ROLE_ITERATIVE
    beq r2, r4, svc_iterative
    li r4, ROLE_DISPATCHER
    beq r2, r4, svc_dispatcher

svc_worker:                         # register a dynamic endpoint under the role's name, then serve
    addi r2, r2, -ROLE_POOL1
    shli r2, r2, 2
    li r4, w_names - task_image
    add r4, r4, r2
    ld r2, 0(r4)
    li r3, 0
    syscall SYS_REGISTER            # r2 <- the port the kernel chose
    li r3, 0
    syscall SYS_BIND
    j svc_serve

svc_iterative:
    call svc_publish
svc_serve:                          # one request at a time: receive, handle, reply (a cancel restarts here)
    li r2, S_REQ
    li r3, MSG_MAX
    syscall SYS_RECV
    blt r2, zero, svc_serve
    call svc_handle
    j svc_serve

svc_dispatcher:                     # hand each request to a worker: the stateful services to their own, the
    call svc_publish                # others to whichever pool worker is free
.if HAS_POOL
    li r2, n_pool1 - task_image
    call svc_find
    st r2, V_W_POOL1(zero)
    li r2, n_pool2 - task_image
    call svc_find
    st r2, V_W_POOL2(zero)
.endif
.if HAS_KV
    li r2, n_wkv - task_image
    call svc_find
    st r2, V_W_KV(zero)
.endif
.if HAS_SESSION
    li r2, n_wsession - task_image
    call svc_find
    st r2, V_W_SESSION(zero)
.endif
disp_next:
    li r2, S_REQ
    li r3, MSG_MAX
    syscall SYS_RECV
    blt r2, zero, disp_next
    li r4, S_REQ
    ld r5, HDR_PORT(r4)
.if HAS_KV
    li r6, KV_PORT
    bne r5, r6, 1f
    ld r10, V_W_KV(zero)
    li r11, 0
    j 3f
1:
.endif
.if HAS_SESSION
    li r6, SESSION_PORT
    bne r5, r6, 2f
    ld r10, V_W_SESSION(zero)
    li r11, 0
    j 3f
2:
.endif
    ld r10, V_W_POOL1(zero)
    ld r11, V_W_POOL2(zero)
3:  mov r2, r10                     # r10, r11: the workers that may take it (0: none)
    li r3, S_REQ
    syscall SYS_FORWARD
    beqz r2, disp_next
    beqz r11, 4f
    mov r2, r11
    li r3, S_REQ
    syscall SYS_FORWARD
    beqz r2, disp_next
4:  syscall SYS_YIELD               # every worker that may take it is busy: let them run, then try again
    j 3b

svc_find:                           # r2 <- the port registered under the name at r2, once there is one
    mov r9, r2
1:  mov r2, r9
    syscall SYS_LOOKUP
    bge r2, zero, 2f
    li r2, 1
    syscall SYS_SLEEP
    j 1b
2:  ret

.macro SVC_PUBLISH name, port, flags
    li r2, \name - task_image
    li r3, \port
    syscall SYS_REGISTER
    li r2, \port
    li r3, \flags
    syscall SYS_BIND
.endm

svc_publish:                        # register and bind every service of the build on its well-known port
.if SERVICES & SVC_ECHO
    SVC_PUBLISH n_echo, ECHO_PORT, 0
.endif
.if SERVICES & SVC_CRC32
    SVC_PUBLISH n_crc32, CRC32_PORT, 0
.endif
.if SERVICES & SVC_PRIMES
    SVC_PUBLISH n_primes, PRIMES_PORT, BIND_CANCEL  # long and stateless: a cancel may stop it anywhere
.endif
.if SERVICES & SVC_KV
    SVC_PUBLISH n_kv, KV_PORT, 0
.endif
.if SERVICES & SVC_SESSION
    SVC_PUBLISH n_session, SESSION_PORT, 0
.endif
    ret

.macro SVC_ROUTE port, handler
    li r6, \port
    bne r5, r6, svc_no\@
    call \handler
    j svc_answer
svc_no\@:
.endm

svc_handle:                         # serve the request at S_REQ with the service of its port, and reply
    push lr
    li r10, S_REQ
    ld r5, HDR_PORT(r10)
    ld r3, HDR_LEN(r10)
    addi r2, r10, HDR_SIZE
.if SERVICES & SVC_ECHO
    SVC_ROUTE ECHO_PORT, echo_handle
.endif
.if SERVICES & SVC_CRC32
    SVC_ROUTE CRC32_PORT, crc32_handle
.endif
.if SERVICES & SVC_PRIMES
    SVC_ROUTE PRIMES_PORT, primes_handle
.endif
.if SERVICES & SVC_KV
    SVC_ROUTE KV_PORT, kv_handle
.endif
.if SERVICES & SVC_SESSION
    SVC_ROUTE SESSION_PORT, session_handle
.endif
    li r2, r_no_service - task_image
    call svc_text
svc_answer:
    mov r4, r3
    mov r3, r2
    li r10, S_REQ
    ld r2, HDR_TAG(r10)
    syscall SYS_REPLY
    pop lr
    ret

# --- helpers for the services ---------------------------------------------------------------------------------
svc_text:                           # r2 = a NUL-terminated string: r2 <- it, r3 <- its length
    mov r3, r2
1:  ldbu r4, 0(r3)
    beqz r4, 2f
    addi r3, r3, 1
    j 1b
2:  sub r3, r3, r2
    ret

reply_dec:                          # the reply is r3 in decimal: r2 <- S_REP, r3 <- its length
    push lr
    li r2, S_REP
    call fmt_dec
    li r3, S_REP
    sub r3, r2, r3
    li r2, S_REP
    pop lr
    ret

tfind:                              # find the r3-byte key at r2 in the table at r4 of r5 entries of r6 bytes,
    li r7, 0                        # each a key length (0: free), a word, then the key: r2 <- the entry or 0,
1:  ld r8, 0(r4)                    # r3 <- the first free entry or 0 (clobbers r1, r4-r9, r13 only: the
    bnez r8, 2f                     # callers keep their key in r10, r11)
    bnez r7, 4f
    mov r7, r4
    j 4f
2:  bne r8, r3, 4f
    li r9, 0
3:  add r1, r4, r9
    ldbu r1, 8(r1)
    add r13, r2, r9
    ldbu r13, 0(r13)
    bne r1, r13, 4f
    addi r9, r9, 1
    bltu r9, r3, 3b
    mov r2, r4
    mov r3, r7
    ret
4:  add r4, r4, r6
    addi r5, r5, -1
    bnez r5, 1b
    li r2, 0
    mov r3, r7
    ret

    .include "lib.s"

# --- the services -------------------------------------------------------------------------------------------
.if SERVICES & SVC_ECHO
    .include "echo.s"
.endif
.if SERVICES & SVC_CRC32
    .include "crc32.s"
.endif
.if SERVICES & SVC_PRIMES
    .include "primes.s"
.endif
.if SERVICES & SVC_KV
    .include "kv.s"
.endif
.if SERVICES & SVC_SESSION
    .include "session.s"
.endif

# --- names and replies ---------------------------------------------------------------------------------------
n_echo:         .asciz "echo"
n_crc32:        .asciz "crc32"
n_primes:       .asciz "primes"
n_kv:           .asciz "kv"
n_session:      .asciz "session"
n_pool1:        .asciz "w.pool1"
n_pool2:        .asciz "w.pool2"
n_wkv:          .asciz "w.kv"
n_wsession:     .asciz "w.session"
r_no_service:   .asciz "ERR no service"
    .align 4
w_names:        .word n_pool1 - task_image, n_pool2 - task_image, n_wkv - task_image, n_wsession - task_image
