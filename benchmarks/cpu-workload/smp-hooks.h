/* Force-included (gcc -include) when build-smp compiles cpu.c for smp.elf: cpu.c's main()
 * becomes workload_main(), and its HTIF console words become per-hart mailboxes (smp.c) that
 * collect the hart's output instead of printing it.  cpu.c itself is not changed. */
#ifndef SMP_HOOKS_H
#define SMP_HOOKS_H
#include <stdint.h>

/* Each call first takes a character the hart wrote to its tohost mailbox into its output
 * buffer and clears the mailbox, so cpu.c's putch() (wait for 0, write, wait for 0) goes on
 * as if a host had taken the character. */
volatile uint64_t *smp_tohost(void);
volatile uint64_t *smp_fromhost(void);

#define tohost (*smp_tohost())
#define fromhost (*smp_fromhost())
#define main workload_main

#endif
