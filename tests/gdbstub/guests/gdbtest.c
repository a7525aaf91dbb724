/*
 * gdbtest: a bare-metal program for the gdb stub tests (tests/gdbstub/), run as
 *
 *   kvmpy -M virt -smp 2 -bios none -nographic -kernel gdbtest.elf -S -gdb tcp::PORT
 *
 * and driven by gdb-multiarch the same way against qemu-system-riscv64.  Hart 0 runs main()
 * (calls to look at with break/finish/bt, a variable to watch, picolibc's memset/strlen),
 * prints "gdbtest: total=N len=M" on the UART and ends with PASS on the sifive_test
 * finisher; hart 1 parks in secondary() (WFI with interrupts off).  Build: ./build.sh.
 */
#include <stdint.h>
#include <string.h>

#define UART 0x10000000UL
#define FINISHER 0x100000UL

volatile unsigned long counter;
volatile unsigned long hart1_seen;
static char buf[32];

static void uart_putc(char c)
{
    *(volatile uint8_t *)UART = (uint8_t)c;
}

static void uart_puts(const char *s)
{
    while (*s)
        uart_putc(*s++);
}

static void uart_putnum(unsigned long n)
{
    char digits[24];
    int i = 0;
    do {
        digits[i++] = (char)('0' + n % 10);
        n /= 10;
    } while (n);
    while (i)
        uart_putc(digits[--i]);
}

int add(int a, int b)
{
    int sum = a + b;
    return sum;
}

int compute(int n)
{
    int total = 0;
    for (int i = 0; i < n; i++)
        total = add(total, i);
    return total;
}

void secondary(void)
{
    hart1_seen = 1;
    for (;;) /* interrupts are off: a WFI that never wakes, at a pc QEMU and kvmpy agree on */
        __asm__ volatile("wfi");
}

int main(void)
{
    int total = compute(10);
    counter = (unsigned long)total;
    memset(buf, 'x', 8);
    int len = (int)strlen(buf);
    uart_puts("gdbtest: total=");
    uart_putnum(counter);
    uart_puts(" len=");
    uart_putnum((unsigned long)len);
    uart_puts("\n");
    *(volatile uint32_t *)FINISHER = 0x5555;
    for (;;)
        ;
}
