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

#endif
