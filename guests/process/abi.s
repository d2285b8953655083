# abi.s - the system-call numbers of the process ABI (docs/abi.md): the guest kernel's calls 0-4, and the
# calls only the process VM serves (popek run --process). `syscall N`; arguments in r2, r3; result in r2.

.equ SYS_EXIT,      0               # r2 = status; does not return
.equ SYS_WRITE,     1               # r2 = address, r3 = length: r2 <- length, or -1 for a bad buffer
.equ SYS_GETPID,    2               # r2 <- pid
.equ SYS_YIELD,     3               # give up the processor (r2 unchanged)
.equ SYS_SLEEP,     4               # r2 = clock ticks (r2 unchanged)
.equ SYS_READ,      11              # r2 = address, r3 = length: r2 <- bytes read (0: no more input), or -1
.equ SYS_CLOCK,     12              # r2 <- the process's time in instructions (its own, and the ticks slept)
