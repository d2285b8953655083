# netdefs.s - the server build's configuration (equates only; kernel.s includes it with -D SERVER).
#
# Build-time choices (popek run -D NAME=VALUE):
#   SERVICES    which services to load, a mask: 1 echo, 2 crc32, 4 primes, 8 kv, 16 session (default 31: all)
#   CONCURRENT  the concurrent design (a dispatcher task and worker tasks); without it, the iterative design
#               (one task serves every request, one at a time)
# The memory map and the formats are in guests/servers/README.md.

.ifndef SERVICES
    .equ SERVICES,  31
.endif
.equ SVC_ECHO,      1
.equ SVC_CRC32,     2
.equ SVC_PRIMES,    4
.equ SVC_KV,        8
.equ SVC_SESSION,   16
.equ HAS_POOL,      (SERVICES & (SVC_ECHO | SVC_CRC32 | SVC_PRIMES)) != 0   # stateless: any worker serves them
.equ HAS_KV,        (SERVICES & SVC_KV) != 0
.equ HAS_SESSION,   (SERVICES & SVC_SESSION) != 0
.if (SERVICES & 31) == 0 || (SERVICES & ~31) != 0
    .error "SERVICES must be a non-empty mask of 1 echo, 2 crc32, 4 primes, 8 kv, 16 session"
.endif

# Well-known ports (the names service on NAMES_PORT is the kernel's own; see guests/servers/README.md).
.equ NAMES_PORT,    53
.equ ECHO_PORT,     7
.equ CRC32_PORT,    32
.equ PRIMES_PORT,   33
.equ KV_PORT,       34
.equ SESSION_PORT,  35
.equ DYNAMIC_PORT0, 1024            # the first port register hands out

# Task roles: the argument every service task finds in r2 when it starts.
.equ ROLE_ITERATIVE, 0              # binds every service and serves each request itself
.equ ROLE_DISPATCHER, 1             # binds every service and forwards each request to a worker
.equ ROLE_POOL1,    2               # workers for the stateless services
.equ ROLE_POOL2,    3
.equ ROLE_KV,       4               # the one worker that keeps the kv store
.equ ROLE_SESSION,  5               # the one worker that keeps the session counters

# Region sizes: what each role touches of the service task's virtual map (guests/servers/README.md).
.equ REGION_SMALL,  0x10000         # code, buffers, stack: the dispatcher
.equ REGION_SESSION, 0x14000        # ... and the session table
.equ REGION_KV,     0x58000         # ... and the kv store
.equ REGION_BIG,    0x100000        # ... and the prime sieve (the iterative server and the pool workers)

.if SERVICES & SVC_PRIMES           # the pool workers and the iterative server need only what their services use
    .equ REGION_POOL, REGION_BIG
    .equ REGION_ITERATIVE, REGION_BIG
.else
    .equ REGION_POOL, REGION_SMALL
  .if HAS_KV
    .equ REGION_ITERATIVE, REGION_KV
  .elseif HAS_SESSION
    .equ REGION_ITERATIVE, REGION_SESSION
  .else
    .equ REGION_ITERATIVE, REGION_SMALL
  .endif
.endif

.equ REGION0,       0x100000        # task regions follow the kernel's first MiB
.equ QUANTUM,       20000           # a long request is preempted; each tick also looks at the card
.ifdef CONCURRENT
    .equ NTASKS,    1 + 2 * HAS_POOL + HAS_KV + HAS_SESSION
.else
    .equ NTASKS,    1
.endif

# System calls of the server build, after kernel.s's 0-4; arguments in r2, r3, r4, result in r2 (-1: refused).
.equ SYS_BIND,      5               # r2 = port, r3 = flags (BIND_CANCEL): messages to port come to this task
.equ SYS_RECV,      6               # r2 = buffer (word aligned), r3 = capacity: wait for a message; r2 <- length
.equ SYS_REPLY,     7               # r2 = tag of the request being served, r3 = buffer, r4 = length
.equ SYS_REGISTER,  8               # r2 = name (NUL-terminated), r3 = port or 0 (assign one): r2 <- the port
.equ SYS_LOOKUP,    9               # r2 = name: r2 <- its port
.equ SYS_FORWARD,   10              # r2 = port, r3 = the request as recv wrote it: hand it to the task there
.equ SYS_LAST,      10
.equ BIND_CANCEL,   1               # requests to this port may be cancelled (the task restarts in its recv)
.equ MSG_TRUNC,     2               # header flag: the payload did not fit the buffer and was cut

# The header recv and forward write before the payload.
.equ HDR_TAG,       0
.equ HDR_PORT,      4
.equ HDR_LEN,       8
.equ HDR_FLAGS,     12
.equ HDR_SIZE,      16

# More of the task control block (kernel.s has registers, pc, relocation, state, wake-up tick).
.equ RECEIVING,     3               # a task state: blocked in recv
.equ TCB_RBUF,      80              # recv's buffer and capacity while RECEIVING
.equ TCB_RCAP,      84
.equ TCB_TAG,       88              # the request the task serves (0: none), its port and binding flags
.equ TCB_PORT,      92
.equ TCB_FLAGS,     96
.equ TCB_RPC,       100             # where a cancelled request's task restarts: its last recv, with its sp,
.equ TCB_RSP,       104             # r2 and r3 as they were then
.equ TCB_R2,        108
.equ TCB_R3,        112

# The network card's memory in the kernel's first MiB (kernel code and data stay below TXBUFS).
.equ NIC_N,         16              # descriptors per ring
.equ MSG_MAX,       8192            # the longest message a service receives or sends
.equ MSG_SHIFT,     13
.equ TXBUFS,        0x40000         # NIC_N transmit buffers of MSG_MAX bytes (descriptor i uses buffer i)
.equ RXBUFS,        0x60000         # RX_COUNT receive buffers of MSG_MAX bytes, posted and held in any order
.equ RX_COUNT,      32
.equ UBUFS,         0xA0000         # NIC_N urgent receive buffers of UMSG_MAX bytes
.equ UMSG_MAX,      256
.equ UMSG_SHIFT,    8
.equ BIGBUF,        0xB0000         # a buffer for a message longer than the receive ring's (then refused)
.equ UBIGBUF,       0xC0000         # and one for the urgent ring's
.equ NIC_MTU,       65536
