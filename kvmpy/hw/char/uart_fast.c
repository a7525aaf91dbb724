/*
 * kvmpy: the 16550's hot registers in C (see uart_fast.h for the contract with serial.py).
 */
#define _POSIX_C_SOURCE 200809L
#include "uart_fast.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define UART_RBR_THR 0
#define UART_LSR 5

struct uart_fast {
    pthread_mutex_t lock;
    pthread_cond_t output; /* signalled when the buffer stops being empty or gets half full */
    unsigned shift;
    unsigned lsr;
    unsigned mode;
    int thr;               /* last byte stored since uart_fast_take_thr, or -1 */
    int closed;
    size_t len, cap;
    uint32_t pending;      /* len, also read without the lock (uart_fast_pending_word) */
    uint8_t buf[];
};

uart_fast *uart_fast_new(unsigned regshift, size_t capacity)
{
    if (capacity < 2 || regshift > 16)
        return NULL;
    uart_fast *u = malloc(sizeof(*u) + capacity);
    if (!u)
        return NULL;
    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr) != 0) {
        free(u);
        return NULL;
    }
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int err = pthread_cond_init(&u->output, &attr);
    pthread_condattr_destroy(&attr);
    if (err != 0) {
        free(u);
        return NULL;
    }
    if (pthread_mutex_init(&u->lock, NULL) != 0) {
        pthread_cond_destroy(&u->output);
        free(u);
        return NULL;
    }
    u->shift = regshift;
    u->lsr = 0;
    u->mode = 0;
    u->thr = -1;
    u->closed = 0;
    u->len = 0;
    u->pending = 0;
    u->cap = capacity;
    return u;
}

void uart_fast_free(uart_fast *u)
{
    if (!u)
        return;
    pthread_cond_destroy(&u->output);
    pthread_mutex_destroy(&u->lock);
    free(u);
}

void uart_fast_set(uart_fast *u, unsigned lsr, unsigned mode)
{
    pthread_mutex_lock(&u->lock);
    u->lsr = lsr & 0xff;
    u->mode = mode & (UART_FAST_LSR | UART_FAST_THR);
    pthread_mutex_unlock(&u->lock);
}

size_t uart_fast_take_output(uart_fast *u, uint8_t *out, size_t max)
{
    pthread_mutex_lock(&u->lock);
    size_t n = u->len < max ? u->len : max;
    memcpy(out, u->buf, n);
    memmove(u->buf, u->buf + n, u->len - n);
    u->len -= n;
    __atomic_store_n(&u->pending, (uint32_t)u->len, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&u->lock);
    return n;
}

int uart_fast_take_thr(uart_fast *u)
{
    pthread_mutex_lock(&u->lock);
    int thr = u->thr;
    u->thr = -1;
    pthread_mutex_unlock(&u->lock);
    return thr;
}

size_t uart_fast_pending(uart_fast *u)
{
    return __atomic_load_n(&u->pending, __ATOMIC_RELAXED);
}

const uint32_t *uart_fast_pending_word(uart_fast *u) { return &u->pending; }

int uart_fast_wait_output(uart_fast *u, int delay_ms)
{
    pthread_mutex_lock(&u->lock);
    while (!u->len && !u->closed)
        pthread_cond_wait(&u->output, &u->lock);
    if (!u->closed && delay_ms > 0) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_nsec += (long)(delay_ms % 1000) * 1000000L;
        until.tv_sec += delay_ms / 1000 + until.tv_nsec / 1000000000L;
        until.tv_nsec %= 1000000000L;
        while (!u->closed && u->len && u->len < u->cap / 2)
            if (pthread_cond_timedwait(&u->output, &u->lock, &until) == ETIMEDOUT)
                break;
    }
    int open = !u->closed;
    pthread_mutex_unlock(&u->lock);
    return open;
}

void uart_fast_close(uart_fast *u)
{
    pthread_mutex_lock(&u->lock);
    u->closed = 1;
    pthread_cond_broadcast(&u->output);
    pthread_mutex_unlock(&u->lock);
}

int uart_fast_mmio(void *opaque, uint64_t offset, uint32_t size, int is_write,
                   uint64_t *value)
{
    uart_fast *u = opaque;
    unsigned reg = (unsigned)(offset >> u->shift) & 7;
    int done = 0;
    (void)size; /* every width reaches the byte register (QEMU's serial_mm ops truncate) */
    pthread_mutex_lock(&u->lock);
    if (is_write) {
        if (reg == UART_RBR_THR && (u->mode & UART_FAST_THR) && u->len < u->cap) {
            uint8_t byte = (uint8_t)*value;
            u->buf[u->len++] = byte;
            __atomic_store_n(&u->pending, (uint32_t)u->len, __ATOMIC_RELAXED);
            u->thr = byte;
            if (u->len == 1 || u->len == u->cap / 2)
                pthread_cond_signal(&u->output);
            done = 1;
        }
    } else if (reg == UART_LSR && (u->mode & UART_FAST_LSR)) {
        *value = u->lsr;
        done = 1;
    }
    pthread_mutex_unlock(&u->lock);
    return done;
}
