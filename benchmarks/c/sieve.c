/* The work of guests/programs/primes.s in C: count the primes below N = 10000 with the sieve of Eratosthenes,
 * PASSES times (the first argument, default 1), and print the count (1229) as the guest does.
 *
 * Each pass clears the N flag bytes one by one, then walks i from 2 up: an unmarked i is counted and, when
 * i * i < N, marks every multiple from i * i on, exactly the guest's loops.
 */
#include "passes.h"

#define N 10000u

unsigned char sieve[N]; /* global: the compiler cannot prove one pass the same as the next */

__attribute__((noinline)) uint32_t count_primes(void)
{
    for (unsigned char *p = sieve; p < sieve + N; p++)
        *p = 0;
    uint32_t count = 0;
    for (uint32_t i = 2; i < N; i++) {
        if (sieve[i])
            continue;
        count++;
        for (uint32_t j = i * i; j < N; j += i)
            sieve[j] = 1;
    }
    return count;
}

int main(int argc, char **argv)
{
    return run_passes(argc, argv, count_primes, "%u\n");
}
