/* The P32 C core: an interpreter with exactly the semantics of popek/cores/reference.py.
 *
 * p32_run() copies the hot part of the state (registers, pc, psw, R, pending) into locals, runs up to
 * `budget` steps with one dispatch per instruction (computed goto under GCC and Clang, a switch elsewhere),
 * and writes the locals back on every exit.  Rarely used control registers stay in the state array.
 *
 * Time is lazy, so the fast path of a step is one comparison, one bounds check, a fetch and a dispatch:
 *  - `ret` counts the instructions retired in this call; cycle = cbase + ret;
 *  - a running timer is kept as the value of `ret` at which it reaches zero (`tdead`);
 *  - `stop` = min(the budget, tdead): reaching it, or anything that may make an interrupt deliverable or pc
 *    misaligned (mtcr, setpsw, iret, wfi, jalr to an odd target, a trap, entry), goes through the slow
 *    path, which expires the timer, checks the budget, takes an interrupt and checks pc's alignment.
 * Nothing a guest does can make it read or write outside `mem`: every access is checked against the
 * relocation window, which is clamped to the memory size.
 *
 * Values follow the state's conventions (popek/isa/state.py): 32-bit quantities are stored unsigned (a state
 * outside that contract, such as a negative timer, is not mirrored).  psw, base, bound and pending are
 * kept as the raw int64 the state holds, because the reference core copies them between slots unmasked
 * (a trap saves psw/base/bound as they are; bound becomes memsize).
 */
#include "core.h"

#if defined(__GNUC__) || defined(__clang__)
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
#ifndef P32_NO_COMPUTED_GOTO
#define P32_COMPUTED_GOTO 1
#endif
#else
#define LIKELY(x) (x)
#define UNLIKELY(x) (x)
#endif

static inline uint32_t load32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline void store32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* Instruction fields. */
#define RA ((word >> 20) & 15u)
#define RB ((word >> 16) & 15u)
#define RC ((word >> 12) & 15u)
#define IMM (word & 0xFFFFu)
#define SIMM (((word & 0xFFFFu) ^ 0x8000u) - 0x8000u)       /* sext(imm16), modulo 2**32 */
#define SOFF20 (((word & 0xFFFFFu) ^ 0x80000u) - 0x80000u) /* sext(off20), modulo 2**32 */
#define SIGNED_LT(x, y) (((x) ^ 0x80000000u) < ((y) ^ 0x80000000u))

/* Stray bits in a field that instruction NAME does not use (ISA §3); a constant, folded at compile time. */
#define STRAY(NAME) (word & p32_must_be_zero[P32_OP_##NAME])

/* The relocation window R, clamped to memory: an access of n bytes at va is allowed iff va + n <= limit. */
#define SET_WINDOW()                                                                                        \
    do {                                                                                                    \
        int64_t lim_ = (int64_t)(uint32_t)bound, room_ = memsize - (int64_t)(uint32_t)base;                 \
        if (room_ < lim_)                                                                                   \
            lim_ = room_;                                                                                   \
        limit = lim_ > 0 ? (uint64_t)lim_ : 0;                                                              \
        mb = mem + (limit ? (uint32_t)base : 0);                                                            \
    } while (0)

#define FAULT(cause, info)                                                                                  \
    do {                                                                                                    \
        tc = (cause);                                                                                       \
        ti = (info);                                                                                        \
        goto trap;                                                                                          \
    } while (0)

/* Check a data access; on success `mb + va` is the byte to use. */
#define CHECK_WORD(va)                                                                                      \
    do {                                                                                                    \
        if (UNLIKELY((va) & 3u))                                                                            \
            FAULT(P32_ALIGN, va);                                                                           \
        if (UNLIKELY((uint64_t)(va) + 4 > limit))                                                           \
            FAULT(P32_MEM_FAULT, va);                                                                       \
    } while (0)
#define CHECK_BYTE(va)                                                                                      \
    do {                                                                                                    \
        if (UNLIKELY((uint64_t)(va) + 1 > limit))                                                           \
            FAULT(P32_MEM_FAULT, va);                                                                       \
    } while (0)

#define NEVER INT64_MAX /* tdead of a timer that is not running */

/* Start the next step on the fast path: pc is aligned and nothing but the budget or the timer can be due
 * (the slow path checks those when ret reaches stop).  Leaves the instruction word in `word`. */
#ifdef P32_COMPUTED_GOTO
#define CASE(NAME) L_##NAME:
#define NEXT()                                                                                              \
    do {                                                                                                    \
        r[0] = 0;                                                                                           \
        if (UNLIKELY(ret >= stop))                                                                          \
            goto slow;                                                                                      \
        if (UNLIKELY((uint64_t)pc + 4 > limit))                                                             \
            FAULT(P32_MEM_FAULT, pc);                                                                       \
        word = load32(fmb + pc); /* fmb: binary-rewriting support (== mb unless fetching a shadow copy) */  \
        goto *dispatch[word >> 24];                                                                         \
    } while (0)
#else
#define CASE(NAME) case P32_OP_##NAME:
#define NEXT() goto next
#endif

/* Retire the current instruction and go on (the timer ticks implicitly: it is tdead - ret). */
#define RETIRE_NEXT()                                                                                       \
    do {                                                                                                    \
        pc += 4;                                                                                            \
        ret++;                                                                                              \
        NEXT();                                                                                             \
    } while (0)
/* Retire, then take the slow path: after a change that may make an interrupt deliverable or pc odd. */
#define RETIRE_SLOW()                                                                                       \
    do {                                                                                                    \
        ret++;                                                                                              \
        goto slow;                                                                                          \
    } while (0)

/* R-format ALU instruction: check the spare bits, then `check` (a statement, or nothing), compute, retire. */
#define ALU_R_CHECKED(NAME, check, expr)                                                                    \
    CASE(NAME)                                                                                              \
    {                                                                                                       \
        if (UNLIKELY(STRAY(NAME)))                                                                          \
            goto illegal;                                                                                   \
        uint32_t x = r[RB], y = r[RC];                                                                      \
        check;                                                                                              \
        r[RA] = (expr);                                                                                     \
        RETIRE_NEXT();                                                                                      \
    }
#define ALU_R(NAME, expr) ALU_R_CHECKED(NAME, (void)0, expr)
/* Division: a zero divisor raises DIVZERO. */
#define DIVIDE(NAME, expr) ALU_R_CHECKED(NAME, if (UNLIKELY(y == 0)) FAULT(P32_DIVZERO, 0), expr)
#define ALU_I(NAME, expr)                                                                                   \
    CASE(NAME)                                                                                              \
    {                                                                                                       \
        uint32_t x = r[RB];                                                                                 \
        r[RA] = (expr);                                                                                     \
        RETIRE_NEXT();                                                                                      \
    }
#define BRANCH(NAME, cond)                                                                                  \
    CASE(NAME)                                                                                              \
    {                                                                                                       \
        uint32_t x = r[RA], y = r[RB];                                                                      \
        pc += (cond) ? SIMM << 2 : 4u;                                                                      \
        ret++;                                                                                              \
        NEXT();                                                                                             \
    }

/* A system instruction with a profile key: in user mode do what the profile says. */
#define USER_MODE_CHECK(key)                                                                                \
    if (UNLIKELY(!(psw & P32_PSW_S))) {                                                                     \
        int64_t how_ = prof[key];                                                                           \
        if (how_ == P32_IGNORE)                                                                             \
            goto ignore;                                                                                    \
        if (how_ != P32_EXECUTE)                                                                            \
            goto privileged;                                                                                \
    }

/* Decode system instruction NAME: ILLEGAL with stray bits, then in user mode the profile decides. */
#define SYSTEM_DECODE(NAME)                                                                                 \
    if (UNLIKELY(STRAY(NAME)))                                                                              \
        goto illegal;                                                                                       \
    USER_MODE_CHECK(p32_profile_key[P32_OP_##NAME])

/* binary-rewriting support --------------------------------------------------------------------------------
 * Active while F_REWRITE is set and 4 <= D <= base (D = state[RW_SHADOW]), which keeps every shadow access
 * inside memory: a store leaves the marker over the shadow words holding its first and last byte, and with
 * RW_FETCH set instructions come from the shadow copy, D bytes below, where opcodes 0xC0-0xDF decode. */
#define RW_WINDOW()                                                                                         \
    do {                                                                                                    \
        rw_d = state[P32_RW_SHADOW];                                                                        \
        rw_mark = (flags & P32_F_REWRITE) && rw_d >= 4 && rw_d <= (int64_t)(uint32_t)base;                  \
        rw_fetch = rw_mark && state[P32_RW_FETCH] != 0;                                                     \
        fmb = rw_fetch && limit ? mb - rw_d : mb;                                                           \
    } while (0)
/* Most stores hit data, whose copy already holds the marker: write it only where it is not there yet. */
#define RW_MARK_WORD(p)                                                                                     \
    do {                                                                                                    \
        if (load32(p) != (uint32_t)P32_RW_OP_XLATE << 24)                                                   \
            store32((p), (uint32_t)P32_RW_OP_XLATE << 24);                                                  \
    } while (0)
#define RW_MARK_STORE(va, n)                                                                                \
    do {                                                                                                    \
        if (UNLIKELY(rw_mark)) {                                                                            \
            uint64_t pa_ = (uint64_t)(uint32_t)base + (va) - (uint64_t)rw_d;                                \
            RW_MARK_WORD(mem + (pa_ & ~(uint64_t)3));                                                       \
            RW_MARK_WORD(mem + ((pa_ + (n) - 1) & ~(uint64_t)3));                                           \
        }                                                                                                   \
    } while (0)

/* paravirtual support ------------------------------------------------------------------------------------
 * The processor's help for a paravirtual guest under F_PV, as popek/cores/reference.py describes it: a trap
 * gate into the guest kernel (PV_DIRECT), HC_IRET, HC_SET_TIMER and HC_IRQ performed in the core (PV_FAST),
 * and IE kept equal to "the shared mask word is 0" at timer expiry and after those hypercalls.  Active for a
 * whole call (pv) while F_PV is set and the shared area's words fit in memory at an aligned address. */
static inline uint32_t pv_get(const int64_t *state, const uint8_t *mem, int offset)
{
    return load32(mem + state[P32_PV_SHARED] + offset);
}
static inline void pv_put(const int64_t *state, uint8_t *mem, int offset, uint32_t value)
{
    store32(mem + state[P32_PV_SHARED] + offset, value);
}
static inline int64_t pv_ie(const int64_t *state, const uint8_t *mem, int64_t psw) /* IE <- mask == 0 */
{
    return (psw & P32_PSW_S) | (pv_get(state, mem, P32_SH_MASK) ? 0 : P32_PSW_IE);
}
/* The timer just reached zero: set the shared pending word and sample the mask; returns the new psw. */
static inline int64_t pv_expired(const int64_t *state, uint8_t *mem, int64_t psw)
{
    pv_put(state, mem, P32_SH_PENDING, 1);
    return pv_ie(state, mem, psw);
}

/* The core.  `out` to the console port retires inside the call while the console buffer has room (the byte
 * goes to console[*nout], as the host would have written it); every other port, and console input, exit. */
static int run(int64_t *state, uint8_t *mem, int64_t memsize, int64_t budget, uint8_t *console, int64_t room,
               int64_t *nout)
{
#ifdef P32_COMPUTED_GOTO
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpragmas"
#pragma GCC diagnostic ignored "-Woverride-init"
#pragma GCC diagnostic ignored "-Winitializer-overrides"
#define DISPATCH_ENTRY(opc, NAME) [opc] = &&L_##NAME,
    /* every opcode not in the table is ILLEGAL */
    static const void *const dispatch[256] = {[0 ... 255] = &&L_illegal, P32_OPS(DISPATCH_ENTRY)};
#undef DISPATCH_ENTRY
#pragma GCC diagnostic pop
#endif
    uint32_t r[16];
    uint32_t pc = (uint32_t)state[P32_PC];
    int64_t psw = state[P32_PSW], base = state[P32_BASE], bound = state[P32_BOUND];
    int64_t pending = state[P32_PENDING];
    const int64_t flags = state[P32_FLAGS];
    const int64_t *const prof = state + P32_PROFILE;
    int64_t ret = 0;                        /* instructions retired in this call */
    int64_t bstop = budget;                 /* ret at which the budget is spent (each trap taken lowers it) */
    int64_t cbase = state[P32_CYCLE];       /* cycle = cbase + ret */
    int64_t tfix = state[P32_TIMER], tdead; /* timer = tdead - ret while running, else tfix */
    int64_t stop = 0;                       /* the fast path runs while ret < stop */
    uint64_t limit;
    uint8_t *mb;
    uint32_t word = 0, tc = 0, ti = 0;
    /* binary-rewriting support: stores leave markers (rw_mark), fetches read the shadow copy at fmb */
    int rw_mark = 0, rw_fetch = 0;
    int64_t rw_d = 0;
    uint8_t *fmb;
    int pv; /* paravirtual support: active in this call */
    int rc, i;

    for (i = 0; i < 16; i++)
        r[i] = (uint32_t)state[P32_R0 + i];
    if (memsize < 0)
        memsize = 0;
    tdead = tfix > 0 ? tfix : NEVER;
    SET_WINDOW();
    RW_WINDOW(); /* binary-rewriting support */
    pv = (flags & P32_F_PV) && state[P32_PV_SHARED] >= 0 && !(state[P32_PV_SHARED] & 3) &&
         state[P32_PV_SHARED] <= memsize - P32_SH_CORE_BYTES; /* paravirtual support */
#ifdef P32_COMPUTED_GOTO
    goto slow;
#else
    goto slow;
next:
    r[0] = 0;
    if (UNLIKELY(ret >= stop))
        goto slow;
    if (UNLIKELY((uint64_t)pc + 4 > limit))
        FAULT(P32_MEM_FAULT, pc);
    word = load32(fmb + pc); /* binary-rewriting support: fmb */
    switch (word >> 24) {
#endif

    ALU_R(ADD, x + y)
    ALU_R(SUB, x - y)
    ALU_R(AND, x & y)
    ALU_R(OR, x | y)
    ALU_R(XOR, x ^ y)
    ALU_R(SHL, x << (y & 31u))
    ALU_R(SHR, x >> (y & 31u))
    ALU_R(SAR, (uint32_t)((int32_t)x >> (y & 31u)))
    ALU_R(MUL, x * y)
    ALU_R(SLT, (uint32_t)SIGNED_LT(x, y))
    ALU_R(SLTU, (uint32_t)(x < y))

    DIVIDE(DIV, y == 0xFFFFFFFFu ? 0u - x : (uint32_t)((int32_t)x / (int32_t)y)) /* INT_MIN / -1 = INT_MIN */
    DIVIDE(DIVU, x / y)
    DIVIDE(REM, y == 0xFFFFFFFFu ? 0u : (uint32_t)((int32_t)x % (int32_t)y)) /* INT_MIN % -1 = 0 */
    DIVIDE(REMU, x % y)

    CASE(LUI)
    {
        if (UNLIKELY(STRAY(LUI)))
            goto illegal;
        r[RA] = IMM << 16;
        RETIRE_NEXT();
    }
    ALU_I(ADDI, x + SIMM)
    ALU_I(ANDI, x & IMM)
    ALU_I(ORI, x | IMM)
    ALU_I(XORI, x ^ IMM)
    ALU_I(SHLI, x << (word & 31u))
    ALU_I(SHRI, x >> (word & 31u))
    ALU_I(SARI, (uint32_t)((int32_t)x >> (word & 31u)))
    ALU_I(SLTI, (uint32_t)SIGNED_LT(x, SIMM))
    ALU_I(SLTIU, (uint32_t)(x < SIMM))

    CASE(LD)
    {
        uint32_t va = r[RB] + SIMM;
        CHECK_WORD(va);
        r[RA] = load32(mb + va);
        RETIRE_NEXT();
    }
    CASE(LDB)
    {
        uint32_t va = r[RB] + SIMM;
        CHECK_BYTE(va);
        r[RA] = ((uint32_t)mb[va] ^ 0x80u) - 0x80u;
        RETIRE_NEXT();
    }
    CASE(LDBU)
    {
        uint32_t va = r[RB] + SIMM;
        CHECK_BYTE(va);
        r[RA] = mb[va];
        RETIRE_NEXT();
    }
    CASE(ST)
    {
        uint32_t va = r[RB] + SIMM;
        CHECK_WORD(va);
        store32(mb + va, r[RA]);
        RW_MARK_STORE(va, 4); /* binary-rewriting support */
        RETIRE_NEXT();
    }
    CASE(STB)
    {
        uint32_t va = r[RB] + SIMM;
        CHECK_BYTE(va);
        mb[va] = (uint8_t)r[RA];
        RW_MARK_STORE(va, 1); /* binary-rewriting support */
        RETIRE_NEXT();
    }

    BRANCH(BEQ, x == y)
    BRANCH(BNE, x != y)
    BRANCH(BLT, SIGNED_LT(x, y))
    BRANCH(BGE, !SIGNED_LT(x, y))
    BRANCH(BLTU, x < y)
    BRANCH(BGEU, x >= y)

    CASE(JAL)
    {
        uint32_t target = pc + (SOFF20 << 2);
        r[RA] = pc + 4;
        pc = target;
        ret++;
        NEXT();
    }
    CASE(JALR)
    {
        uint32_t target = r[RB] + SIMM; /* before writing rd: jalr r1, 0(r1) works */
        r[RA] = pc + 4;
        pc = target;
        if (UNLIKELY(pc & 3u))
            RETIRE_SLOW(); /* the fetch there raises ALIGN */
        ret++;
        NEXT();
    }

    CASE(SYSCALL)
    {
        if (UNLIKELY(STRAY(SYSCALL)))
            goto illegal;
        FAULT(P32_SYSCALL, IMM);
    }
    CASE(BRK)
    {
        if (UNLIKELY(STRAY(BRK)))
            goto illegal;
        FAULT(P32_BREAK, IMM);
    }
    CASE(HCALL)
    {
        /* paravirtual support: a hypercall the processor performs itself */
        if (pv && !STRAY(HCALL) && IMM < P32_HC_FAST_LIMIT && (state[P32_PV_FAST] >> IMM & 1) &&
            state[P32_PV_KMODE]) {
            uint32_t n = IMM;
            state[P32_PV_NCALLS + n]++;
            if (n == P32_HC_IRET) { /* psw, R (composed with the kernel's) and mask from the frame */
                uint32_t epsw = pv_get(state, mem, P32_SH_EPSW), eb = pv_get(state, mem, P32_SH_EBASE);
                uint32_t ebound = pv_get(state, mem, P32_SH_EBOUND);
                int64_t kbase = (uint32_t)state[P32_PV_KBASE], kbound = (uint32_t)state[P32_PV_KBOUND];
                if (eb < kbound) {
                    base = (uint32_t)(kbase + eb);
                    bound = ebound < kbound - eb ? ebound : kbound - eb;
                } else {
                    base = kbase;
                    bound = 0;
                }
                state[P32_PV_KMODE] = epsw & P32_PSW_S;
                pv_put(state, mem, P32_SH_MASK, epsw & P32_PSW_IE ? 0 : 1);
                pc = pv_get(state, mem, P32_SH_EPC);
                SET_WINDOW();
                psw = pv_ie(state, mem, psw);
                RETIRE_SLOW();
            }
            if (n == P32_HC_SET_TIMER) { /* as mtcr timer */
                pending &= ~(int64_t)P32_PEND_TIMER;
                pv_put(state, mem, P32_SH_PENDING, 0);
                psw = pv_ie(state, mem, psw);
                ret++;
                tfix = r[1];
                tdead = r[1] ? ret + r[1] : NEVER;
                pc += 4;
                goto slow;
            }
            psw = pv_ie(state, mem, psw); /* HC_IRQ */
            pc += 4;
            RETIRE_SLOW();
        }
        if (UNLIKELY(STRAY(HCALL)) || !(flags & P32_F_HCALL_TO_HOST))
            goto illegal;
        state[P32_XCAUSE] = IMM;
        rc = P32_EXIT_HCALL;
        goto out;
    }

    CASE(IRET)
    {
        SYSTEM_DECODE(IRET)
        pc = (uint32_t)state[P32_EPC];
        psw = state[P32_EPSW] & 3;
        base = state[P32_EBASE];
        bound = state[P32_EBOUND];
        SET_WINDOW();
        RETIRE_SLOW();
    }
    CASE(HALT)
    {
        SYSTEM_DECODE(HALT)
        state[P32_STATUS] = r[1] & 0xFFu;
        pc += 4;
        ret++;
        rc = P32_EXIT_HALT;
        goto out;
    }
    CASE(WFI)
    {
        SYSTEM_DECODE(WFI)
        if (!pending) {
            if (tdead == NEVER || (flags & P32_F_TRAPS_TO_HOST)) {
                rc = P32_EXIT_IDLE; /* nothing can end the wait, or the host wants to see it */
                goto out;
            }
            cbase += tdead - ret; /* idle until the timer fires, then retire (one more tick) */
            tdead = NEVER;
            tfix = 0;
            pending |= P32_PEND_TIMER;
            if (pv) /* paravirtual support */
                psw = pv_expired(state, mem, psw);
        }
        pc += 4;
        RETIRE_SLOW();
    }
    CASE(MFCR)
    {
        uint32_t cr = IMM, v;
        if (UNLIKELY(STRAY(MFCR) || cr >= P32_NUM_CRS))
            goto illegal;
        USER_MODE_CHECK(p32_profile_key[P32_OP_MFCR] + cr)
        switch (cr) {
        case P32_CR_PSW: v = (uint32_t)psw; break;
        case P32_CR_BASE: v = (uint32_t)base; break;
        case P32_CR_BOUND: v = (uint32_t)bound; break;
        case P32_CR_TIMER: v = (uint32_t)(tdead == NEVER ? tfix : tdead - ret); break;
        case P32_CR_CYCLE: v = (uint32_t)(cbase + ret); break;
        default: v = (uint32_t)state[P32_CR0 + cr]; break;
        }
        r[RA] = v;
        RETIRE_NEXT();
    }
    CASE(MTCR)
    {
        uint32_t cr = IMM, v;
        if (UNLIKELY(STRAY(MTCR) || cr >= P32_NUM_CRS))
            goto illegal;
        USER_MODE_CHECK(p32_profile_key[P32_OP_MTCR] + cr)
        v = r[RA];
        switch (cr) {
        case P32_CR_PSW: psw = v & 3u; break;
        case P32_CR_BASE: base = v; SET_WINDOW(); break;
        case P32_CR_BOUND: bound = v; SET_WINDOW(); break;
        case P32_CR_CYCLE: break; /* read-only */
        case P32_CR_TIMER:        /* clears a pending timer interrupt; this write does not tick it */
            pending &= ~(int64_t)P32_PEND_TIMER;
            ret++;
            tfix = v;
            tdead = v ? ret + v : NEVER;
            pc += 4;
            goto slow;
        default: state[P32_CR0 + cr] = v; break;
        }
        pc += 4;
        RETIRE_SLOW(); /* psw may now enable interrupts */
    }
    CASE(IN)
    {
        SYSTEM_DECODE(IN)
        state[P32_IO_PORT] = IMM;
        state[P32_IO_WRITE] = 0;
        state[P32_IO_VALUE] = 0;
        state[P32_IO_REG] = RA;
        rc = P32_EXIT_IO;
        goto out;
    }
    CASE(OUT)
    {
        SYSTEM_DECODE(OUT)
        state[P32_IO_PORT] = IMM;
        state[P32_IO_WRITE] = 1;
        state[P32_IO_VALUE] = r[RA];
        state[P32_IO_REG] = 0;
        if (IMM == P32_CONSOLE_PORT && *nout < room) { /* the console write the host would make; it retires */
            console[(*nout)++] = (uint8_t)r[RA];
            RETIRE_NEXT();
        }
        rc = P32_EXIT_IO;
        goto out;
    }
    CASE(GETPSW)
    {
        SYSTEM_DECODE(GETPSW)
        r[RA] = (uint32_t)psw;
        RETIRE_NEXT();
    }
    CASE(SETPSW)
    {
        SYSTEM_DECODE(SETPSW)
        psw = r[RA] & 3u;
        pc += 4;
        RETIRE_SLOW(); /* may enable interrupts */
    }
    CASE(GETBASE)
    {
        SYSTEM_DECODE(GETBASE)
        r[RA] = (uint32_t)base;
        RETIRE_NEXT();
    }

#ifndef P32_COMPUTED_GOTO
    default:
        goto illegal;
    }
#endif

#ifdef P32_COMPUTED_GOTO
L_illegal:
#endif
illegal:
    /* binary-rewriting support: the monitor-only words of a shadow copy */
    if (UNLIKELY(rw_fetch) && (word >> 24) >= P32_RW_OP_XLATE && (word >> 24) <= P32_RW_OP_LAST)
        goto rw_op;
    FAULT(P32_ILLEGAL, word);
privileged:
    FAULT(P32_PRIV, word);
ignore: /* an ignored system instruction retires and does nothing else */
    RETIRE_NEXT();

rw_op: /* binary-rewriting support: a monitor-only word fetched from the shadow copy (reference.py _rw_execute) */
{
    const uint32_t op = word >> 24, orig = word - ((uint32_t)P32_RW_TWIN << 24), oop = orig >> 24;
    const uint32_t imm = orig & 0xFFFFu, ra = (orig >> 20) & 15u;
    int64_t *const vcr = state + P32_VCR0;
    uint32_t cr, v;
    int bad, key;
    if (op == P32_RW_OP_XLATE) {
        rc = P32_EXIT_XLATE;
        goto out;
    }
    if (op == P32_RW_OP_CALLOUT)
        goto rw_callout;
    /* a twin: the original must be a system instruction with a profile key, without stray bits */
    key = p32_profile_key[oop];
    bad = key < 0 || (orig & p32_must_be_zero[oop]) != 0;
    if (p32_cr_operand[oop]) { /* mfcr.<cr>, mtcr.<cr>: one key per control register */
        bad = bad || imm >= P32_NUM_CRS;
        key += (int)imm;
    }
    if (bad)
        FAULT(P32_ILLEGAL, orig);
    if (!(vcr[P32_CR_PSW] & P32_PSW_S)) { /* virtual user mode: the profile decides */
        int64_t how = prof[key];
        if (how == P32_IGNORE)
            goto ignore;
        if (how != P32_EXECUTE)
            FAULT(P32_PRIV, orig);
    }
    switch (oop) {
    case P32_OP_MFCR: case P32_OP_GETPSW: case P32_OP_GETBASE: /* read a virtual CR */
        cr = oop == P32_OP_MFCR ? imm : oop == P32_OP_GETPSW ? P32_CR_PSW : P32_CR_BASE;
        if (cr == P32_CR_CYCLE)
            v = (uint32_t)((uint64_t)cbase + (uint64_t)ret + (uint64_t)vcr[cr]);
        else if (cr == P32_CR_TIMER)
            v = vcr[cr] ? (uint32_t)((uint64_t)vcr[cr] - (uint64_t)cbase - (uint64_t)ret) : 0u;
        else
            v = (uint32_t)vcr[cr];
        r[ra] = v;
        RETIRE_NEXT();
    case P32_OP_MTCR: case P32_OP_SETPSW: /* write a virtual CR, or leave it to the monitor */
        cr = oop == P32_OP_MTCR ? imm : P32_CR_PSW;
        v = r[ra];
        if (cr == P32_CR_PSW) {
            v &= 3u;
            if (((v ^ (uint64_t)vcr[P32_CR_PSW]) & P32_PSW_S) || ((v & P32_PSW_IE) && state[P32_RW_VPEND]))
                goto rw_callout;
            vcr[P32_CR_PSW] = v;
        } else if (cr == P32_CR_BASE || cr == P32_CR_BOUND || cr == P32_CR_TIMER)
            goto rw_callout;
        else if (cr != P32_CR_CYCLE)
            vcr[cr] = v;
        RETIRE_NEXT();
    default: /* iret halt wfi in out */
        goto rw_callout;
    }
rw_callout:
    rc = P32_EXIT_CALLOUT;
    goto out;
}

slow: /* the start of a step when something besides fetch-and-go may be due */
    r[0] = 0;
    if (ret >= tdead) { /* the retirement that brought the timer to zero */
        pending |= P32_PEND_TIMER;
        tdead = NEVER;
        tfix = 0;
        if (pv) /* paravirtual support */
            psw = pv_expired(state, mem, psw);
    }
    if (ret >= bstop)
        goto out_budget;
    if ((psw & P32_PSW_IE) && (pending & (P32_PEND_TIMER | P32_PEND_DEVICE)))
        goto interrupt;
    stop = bstop < tdead ? bstop : tdead;
    RW_WINDOW(); /* binary-rewriting support: base may have changed */
    if (UNLIKELY(pc & 3u))
        FAULT(P32_ALIGN, pc);
    NEXT();

interrupt: /* taken between instructions; the timer first */
    if (pending & P32_PEND_TIMER) {
        tc = P32_TIMER_IRQ;
        ti = 0;
    } else {
        tc = P32_DEVICE_IRQ;
        ti = (uint32_t)state[P32_DEVNUM];
    }
trap:
    if (pv && (state[P32_PV_DIRECT] >> tc & 1)) { /* paravirtual support: a trap gate into the guest kernel */
        uint32_t kbase = (uint32_t)state[P32_PV_KBASE];
        uint32_t epsw = (state[P32_PV_KMODE] ? P32_PSW_S : 0) | (pv_get(state, mem, P32_SH_MASK) ? 0 : P32_PSW_IE);
        pv_put(state, mem, P32_SH_EPC, pc);
        pv_put(state, mem, P32_SH_EPSW, epsw);
        pv_put(state, mem, P32_SH_EBASE, (uint32_t)base - kbase);
        pv_put(state, mem, P32_SH_EBOUND, (uint32_t)bound);
        pv_put(state, mem, P32_SH_CAUSE, tc);
        pv_put(state, mem, P32_SH_BADADDR, ti);
        pv_put(state, mem, P32_SH_MASK, 1);
        psw = 0;
        base = kbase;
        bound = (uint32_t)state[P32_PV_KBOUND];
        SET_WINDOW();
        pc = (uint32_t)state[P32_PV_ENTRY];
        state[P32_PV_KMODE] = 1;
        state[tc >= P32_TIMER_IRQ ? P32_PV_NIRQS : P32_PV_NTRAPS]++;
        bstop--; /* a trap taken is a step */
        goto slow;
    }
    if (flags & P32_F_TRAPS_TO_HOST) {
        state[P32_XCAUSE] = tc;
        state[P32_XINFO] = ti;
        rc = P32_EXIT_TRAP;
        goto out;
    }
    state[P32_EPC] = pc;
    state[P32_EPSW] = psw;
    state[P32_EBASE] = base;
    state[P32_EBOUND] = bound;
    state[P32_CAUSE] = tc;
    state[P32_BADADDR] = ti;
    psw = P32_PSW_S;
    base = 0;
    bound = memsize;
    SET_WINDOW();
    pc = (uint32_t)state[P32_IVT];
    bstop--; /* a trap taken is a step */
    goto slow;

out_budget:
    rc = P32_EXIT_BUDGET;
out:
    if (ret >= tdead) { /* halt retired as the timer reached zero */
        pending |= P32_PEND_TIMER;
        tdead = NEVER;
        tfix = 0;
        if (pv) /* paravirtual support */
            psw = pv_expired(state, mem, psw);
    }
    r[0] = 0;
    for (i = 0; i < 16; i++)
        state[P32_R0 + i] = r[i];
    state[P32_PC] = pc;
    state[P32_PSW] = psw;
    state[P32_BASE] = base;
    state[P32_BOUND] = bound;
    state[P32_TIMER] = tdead == NEVER ? tfix : tdead - ret;
    state[P32_CYCLE] = cbase + ret;
    state[P32_PENDING] = pending;
    state[P32_STEPS] += ret + (budget - bstop);
    return rc;
}

int p32_run(int64_t *state, uint8_t *mem, int64_t memsize, int64_t budget)
{
    int64_t none = 0;
    return run(state, mem, memsize, budget, 0, 0, &none);
}

int p32_run_console(int64_t *state, uint8_t *mem, int64_t memsize, int64_t budget, uint8_t *console, int64_t room,
                    int64_t *nout)
{
    return run(state, mem, memsize, budget, console, room, nout);
}

/* The VM-exit loop of the direct-execution monitors (popek/cores/vmexit.py is the same loop for the JIT core,
 * and says what it does; DirectExecution.run_direct and handle_exit in popek/vmm/monitors/base.py are its
 * specification).  The virtual CPU's privileged instruction is emulated by this core run on the virtual CPU
 * for one step, over the VM's slice only. */
static void enter_trap(int64_t *v, int64_t memsize, int64_t cause, int64_t info) /* state.enter_trap, a step */
{
    v[P32_EPC] = v[P32_PC] & 0xFFFFFFFFu;
    v[P32_EPSW] = v[P32_PSW];
    v[P32_EBASE] = v[P32_BASE];
    v[P32_EBOUND] = v[P32_BOUND];
    v[P32_CAUSE] = cause;
    v[P32_BADADDR] = info & 0xFFFFFFFFu;
    v[P32_PSW] = P32_PSW_S;
    v[P32_BASE] = 0;
    v[P32_BOUND] = memsize;
    v[P32_PC] = v[P32_IVT];
    v[P32_STEPS]++;
}

/* Binary rewriting (popek/vmm/monitors/rewrite.py copy_word, callout_name and callouts are the specification). */
#define IS_INSN_CASE(opc, NAME) case opc:
static int is_insn(uint32_t op) /* the opcode names an instruction */
{
    switch (op) {
        P32_OPS(IS_INSN_CASE)
        return 1;
    default:
        return 0;
    }
}
#undef IS_INSN_CASE

/* The word of the shadow copy the core would fetch next, or -1 where it would fetch none (a page never
 * translated holds markers only, which is as good as -1 to the callers). */
static int64_t copy_word(const int64_t *v, const int64_t *r, const uint8_t *host_mem, int64_t host_memsize,
                         int64_t offset, int64_t memsize)
{
    int64_t base = v[P32_BASE], pc = v[P32_PC], gpa = base + pc, at;
    if ((base | pc) & 3 || pc + 4 > v[P32_BOUND] || gpa + 4 > memsize)
        return -1;
    at = offset - r[P32_RW_SHADOW] + gpa;
    if (at < 0 || at > host_memsize - 4)
        return -1;
    return load32(host_mem + at);
}

/* The counter of a callout of `word`: by instruction, mfcr/mtcr by control register, else "other". */
static int callout_slot(int64_t word)
{
    int64_t op = word >> 24;
    uint32_t orig, oop, cr;
    if (op <= P32_RW_OP_CALLOUT || op > 255)
        return P32_CNT_CALLOUT_OTHER;
    orig = (uint32_t)word - ((uint32_t)P32_RW_TWIN << 24);
    oop = orig >> 24;
    if (!is_insn(oop) || (orig & p32_must_be_zero[oop]) || oop < P32_CALLOUT_OP0 || oop >= P32_CALLOUT_OP0 + 32)
        return P32_CNT_CALLOUT_OTHER;
    if (p32_cr_operand[oop]) {
        cr = orig & 0xFFFFu;
        if (cr >= P32_NUM_CRS)
            return P32_CNT_CALLOUT_OTHER;
        return P32_CNT_CALLOUT_CR + (oop == P32_OP_MTCR ? 16 : 0) + (int)cr;
    }
    return P32_CNT_CALLOUT_OP + (int)(oop - P32_CALLOUT_OP0);
}

/* True when the copy's `word` would call out at once: it is performed in the same exit. */
static int batches(int64_t word)
{
    int64_t op = word >> 24;
    uint32_t oop, cr;
    if (op == P32_RW_OP_CALLOUT)
        return 1;
    if (op <= P32_RW_OP_CALLOUT || op > 255)
        return 0;
    oop = (uint32_t)op - P32_RW_TWIN;
    if (oop == P32_OP_IRET || oop == P32_OP_HALT || oop == P32_OP_WFI || oop == P32_OP_IN || oop == P32_OP_OUT)
        return 1;
    cr = (uint32_t)word & 0xFFFFu;
    return oop == P32_OP_MTCR && (cr == P32_CR_BASE || cr == P32_CR_BOUND || cr == P32_CR_TIMER);
}

int p32_run_vm(int64_t *v, int64_t *r, uint8_t *host_mem, int64_t host_memsize, int64_t offset, int64_t memsize,
               int64_t budget, int64_t flags, int mode, int64_t *cnt, uint8_t *console, int64_t room)
{
    const int64_t start = v[P32_STEPS];
    const int rewrite = mode == P32_VM_REWRITE || mode == P32_VM_REWRITE_USER;
    int64_t none = 0;
    if (offset < 0 || memsize < 0 || offset > host_memsize - memsize) { /* never from the monitors */
        cnt[P32_CNT_CODE] = P32_EXIT_ERROR;
        return P32_VMX_CORE;
    }
    for (;;) {
        int64_t done = v[P32_STEPS] - start, timer, b, cycle0, retired, cause, mark, space;
        int code, i, fetch;
        if (done >= budget)
            return P32_VMX_BUDGET;
        if (mode == P32_VM_HYBRID && (v[P32_PSW] & P32_PSW_S))
            return P32_VMX_SUPERVISOR; /* the monitor interprets the guest kernel */
        if (v[P32_PSW] & P32_PSW_IE) { /* a due virtual interrupt (VM.inject) */
            if (v[P32_PENDING] & P32_PEND_TIMER) {
                enter_trap(v, memsize, P32_TIMER_IRQ, 0);
                cnt[P32_CNT_INJECTED]++;
                continue;
            }
            if (v[P32_PENDING] & P32_PEND_DEVICE) {
                enter_trap(v, memsize, P32_DEVICE_IRQ, v[P32_DEVNUM]);
                cnt[P32_CNT_INJECTED]++;
                continue;
            }
        }
        fetch = rewrite && ((v[P32_PSW] & P32_PSW_S) || mode == P32_VM_REWRITE_USER); /* run from the copy */
        if (fetch && (v[P32_BASE] & 3))
            return P32_VMX_INTERPRET; /* the copy's word grid does not fit: the monitor interprets */
        /* load the real CPU (VM.load_real_state) */
        for (i = P32_R0; i <= P32_PC; i++)
            r[i] = v[i];
        space = memsize - v[P32_BASE];
        if (space > 0) { /* the guest's own R, further confined to its slice of host memory */
            r[P32_BASE] = offset + v[P32_BASE];
            r[P32_BOUND] = v[P32_BOUND] < space ? v[P32_BOUND] : space;
        } else {
            r[P32_BASE] = offset;
            r[P32_BOUND] = 0;
        }
        r[P32_PSW] = v[P32_PSW] & P32_PSW_IE; /* real user mode; IE mirrors the guest's own */
        r[P32_TIMER] = 0;
        r[P32_PENDING] = 0;
        r[P32_FLAGS] = flags;
        timer = v[P32_TIMER];
        b = budget - done;
        if (timer != 0 && timer < b)
            b = timer; /* stop exactly where the virtual timer expires */
        cycle0 = r[P32_CYCLE];
        if (rewrite)
            r[P32_RW_FETCH] = fetch;
        if (fetch) { /* the virtual CPU, for the twins: cycle and timer as an offset and a deadline */
            r[P32_RW_VPEND] = v[P32_PENDING];
            for (i = 0; i < P32_NUM_CRS; i++)
                r[P32_VCR0 + i] = v[P32_CR0 + i];
            r[P32_VCR0 + P32_CR_CYCLE] = v[P32_CYCLE] - cycle0;
            r[P32_VCR0 + P32_CR_TIMER] = timer ? cycle0 + timer : 0;
        }
        code = run(r, host_mem, host_memsize, b, 0, 0, &none);
        if (fetch) /* what the twins may have written: psw, the trap registers, ivt and scratch */
            for (i = 0; i < P32_NUM_CRS; i++)
                if (i != P32_CR_BASE && i != P32_CR_BOUND && i != P32_CR_TIMER && i != P32_CR_CYCLE)
                    v[P32_CR0 + i] = r[P32_VCR0 + i];
        /* save it back (VM.save_real_state) */
        for (i = P32_R0; i <= P32_PC; i++)
            v[i] = r[i];
        retired = r[P32_CYCLE] - cycle0;
        v[P32_CYCLE] += retired;
        v[P32_STEPS] += retired;
        if (timer != 0) {
            int64_t left = timer - retired > 0 ? timer - retired : 0; /* never run past the expiry */
            v[P32_TIMER] = left;
            if (left == 0)
                v[P32_PENDING] |= P32_PEND_TIMER;
        }
        if (code == P32_EXIT_BUDGET || code == P32_EXIT_HALT) {
            if (timer != 0 && v[P32_TIMER] == 0)
                cnt[P32_CNT_TIMER]++; /* the virtual timer expired: the core stopped for it */
            if (code == P32_EXIT_HALT) {
                v[P32_STATUS] = r[P32_STATUS];
                return P32_VMX_HALT;
            }
            continue;
        }
        if (code == P32_EXIT_CALLOUT && rewrite) { /* the guest's word, and the next while they call out too */
            const int64_t end = v[P32_STEPS] + b - retired;
            int64_t word = copy_word(v, r, host_mem, host_memsize, offset, memsize);
            cnt[P32_CNT_CALLOUTS]++;
            for (;;) {
                cnt[callout_slot(word)]++;
                mark = v[P32_STEPS];
                code = run(v, host_mem + offset, memsize, 1, console, room, &cnt[P32_CNT_CONSOLE]);
                cnt[P32_CNT_EMULATED] += v[P32_STEPS] - mark;
                if (code != P32_EXIT_BUDGET) {
                    cnt[P32_CNT_CODE] = code;
                    cnt[P32_CNT_BATCH_END] = end;
                    return P32_VMX_CALLOUT;
                }
                if (v[P32_STEPS] >= end ||
                    ((v[P32_PSW] & P32_PSW_IE) && (v[P32_PENDING] & (P32_PEND_TIMER | P32_PEND_DEVICE))))
                    break;
                if (!((v[P32_PSW] & P32_PSW_S) || mode == P32_VM_REWRITE_USER))
                    break;
                word = copy_word(v, r, host_mem, host_memsize, offset, memsize);
                if (!batches(word))
                    break; /* the core would run it (or fault on the fetch, or translate): back to the core */
                cnt[P32_CNT_BATCHED]++;
            }
            continue;
        }
        if (code != P32_EXIT_TRAP) {
            cnt[P32_CNT_CODE] = code;
            return P32_VMX_CORE;
        }
        /* a trap (DirectExecution.handle_exit) */
        cause = r[P32_XCAUSE];
        cnt[P32_CNT_CAUSE + (cause < 0 ? 0 : cause < P32_CNT_CAUSES ? cause : P32_CNT_CAUSES - 1)]++;
        if (cause == P32_TIMER_IRQ || cause == P32_DEVICE_IRQ) { /* a real interrupt the guest cannot own */
            r[P32_PENDING] = 0;
            continue;
        }
        if (cause == P32_PRIV && (v[P32_PSW] & P32_PSW_S)) { /* the guest kernel's privileged instruction */
            mark = v[P32_STEPS];
            code = run(v, host_mem + offset, memsize, 1, console, room, &cnt[P32_CNT_CONSOLE]);
            cnt[P32_CNT_EMULATED] += v[P32_STEPS] - mark;
            if (code != P32_EXIT_BUDGET) {
                cnt[P32_CNT_CODE] = code;
                return P32_VMX_VIRTUAL;
            }
            continue;
        }
        enter_trap(v, memsize, cause, r[P32_XINFO]); /* the guest's own trap: reflect it into its kernel */
        cnt[P32_CNT_REFLECTED]++;
    }
}
