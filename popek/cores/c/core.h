/* The P32 C core: the same contract as popek/cores/reference.py, over the same flat int64 state.
 *
 * Every constant of the architecture and of the state layout (P32_*), the opcode list and the per-opcode
 * decode tables come from p32_tables.h, which popek/cores/c/gen_tables.py writes from popek/isa/spec.py and
 * popek/isa/state.py at every build: this file keeps only what C alone needs.
 */
#ifndef P32_CORE_H
#define P32_CORE_H

#include <stdint.h>

#include "p32_tables.h"

/* Run at most `budget` steps of the machine in state/mem (memsize bytes); return the exit code. */
int p32_run(int64_t *state, uint8_t *mem, int64_t memsize, int64_t budget);
/* p32_run, with console output into console[*nout..room) while there is room instead of an exit per byte. */
int p32_run_console(int64_t *state, uint8_t *mem, int64_t memsize, int64_t budget, uint8_t *console, int64_t room,
                    int64_t *nout);
/* The VM-exit loop of the direct-execution monitors (core.c); returns a P32_VMX_* code. */
int p32_run_vm(int64_t *v, int64_t *r, uint8_t *host_mem, int64_t host_memsize, int64_t offset, int64_t memsize,
               int64_t budget, int64_t flags, int mode, int64_t *cnt, uint8_t *console, int64_t room);

#endif
