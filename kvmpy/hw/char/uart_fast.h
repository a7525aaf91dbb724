/*
 * kvmpy: the 16550's hot registers in C, for the ns16550a model of kvmpy/hw/char/serial.py.
 *
 * Linux writes its console byte by byte (8250 console_write: poll LSR until THRE, store THR),
 * and each access would be a trip into Python.  The Python model stays the authority for the
 * UART; it hands this half its LSR and the set of accesses that need no Python (mode), and
 * this half completes them from any vCPU thread through uart_fast_mmio (a c_mmio_fn,
 * kvmpy/hw/c_mmio.h):
 *
 *   UART_FAST_LSR  LSR reads (Python sets it while no BI/OE bit waits to be cleared by one);
 *   UART_FAST_THR  THR writes that raise no interrupt (LCR.DLAB, IER.THRI, MCR.LOOP clear
 *                  and THR empty): the byte is appended to an output buffer.
 *
 * Python takes the buffered bytes for its chardev (uart_fast_take_output) at every return to
 * Python, before its own output, and on a flusher thread that uart_fast_wait_output wakes; a
 * full buffer declines the store, which then goes to Python (that drains first), so no byte is
 * lost or reordered.  uart_fast_take_thr tells the model the last byte stored here (THR, and
 * the THRE interrupt it leaves pending), as QEMU's serial_ioport_write records it.
 *
 * All functions are thread-safe (one mutex per UART).  This header is also the cffi cdef
 * (kvmpy/hw/_build.py reads the part between the CDEF markers).
 */
#ifndef KVMPY_UART_FAST_H
#define KVMPY_UART_FAST_H

#include <stddef.h>
#include <stdint.h>

/* CDEF-BEGIN */
typedef struct uart_fast uart_fast;

#define UART_FAST_LSR 1
#define UART_FAST_THR 2

/* regshift: registers at offset >> regshift (QEMU's serial-mm); capacity: output bytes held
 * (at least 2).  NULL when out of memory. */
uart_fast *uart_fast_new(unsigned regshift, size_t capacity);
/* Only once no accelerator calls uart_fast_mmio and no thread waits in it any more. */
void uart_fast_free(uart_fast *u);
/* The model's LSR and the accesses this half may complete (UART_FAST_* bits). */
void uart_fast_set(uart_fast *u, unsigned lsr, unsigned mode);
/* Move up to max buffered output bytes to out, oldest first; returns how many. */
size_t uart_fast_take_output(uart_fast *u, uint8_t *out, size_t max);
/* The last byte a THR write stored here since the previous call, or -1 if none. */
int uart_fast_take_thr(uart_fast *u);
/* Bytes waiting in the output buffer; the word behind uart_fast_pending_word holds the same
 * count and may be read at any time without a call (a hint: take_output is the truth). */
size_t uart_fast_pending(uart_fast *u);
const uint32_t *uart_fast_pending_word(uart_fast *u);
/* Block until output is buffered, then up to delay_ms more while it stays under half the
 * capacity (so bytes go out in batches, a few milliseconds late at most).  Returns 1 when
 * there may be output to take, 0 once uart_fast_close was called. */
int uart_fast_wait_output(uart_fast *u, int delay_ms);
/* Wake and end every uart_fast_wait_output (for good); accesses keep working. */
void uart_fast_close(uart_fast *u);
/* The c_mmio_fn of the UART's window. */
int uart_fast_mmio(void *opaque, uint64_t offset, uint32_t size, int is_write,
                   uint64_t *value);
/* CDEF-END */

#endif
