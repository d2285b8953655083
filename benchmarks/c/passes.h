/* The pass loop the benchmark programs share: run PASS the number of times given as the first argument
 * (default 1), print its last result with FORMAT on stdout, and the time of the passes alone, by the program's
 * own clock, on stderr as "seconds S" (no start-up, no printing). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static int run_passes(int argc, char **argv, uint32_t (*pass)(void), const char *format)
{
    long passes = argc > 1 ? strtol(argv[1], NULL, 10) : 1;
    if (passes < 1) {
        fprintf(stderr, "usage: %s [PASSES >= 1]\n", argv[0]);
        return 2;
    }
    struct timespec t0, t1;
    uint32_t result = 0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long n = 0; n < passes; n++) {
        result = pass();
        __asm__ volatile("" ::: "memory"); /* every pass is done, none merged with the next */
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf(format, result);
    fprintf(stderr, "seconds %.9f\n", (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9);
    return 0;
}
