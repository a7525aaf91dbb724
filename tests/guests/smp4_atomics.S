/* Four harts (RUN-ARGS: -smp 4): see smp_atomics.S. */
#define HARTS 4
#include "smp_atomics.S"
