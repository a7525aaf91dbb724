/*
 * Baseline for benchmarks/kvm-exits: the same x86 real-mode guest loop as the Python side,
 * run by a minimal C VMM.  Each KVM_EXIT_MMIO write to the UART's THR is "handled" by
 * counting the byte; everything else is an error.
 *
 * usage: kvm_exits_baseline GUEST_CODE_FILE SECONDS
 * prints: <exits> <seconds>
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define RAM_SIZE 0x10000
#define CODE_ADDR 0x1000
#define UART 0x10000

static void die(const char *what)
{
    fprintf(stderr, "kvm_exits_baseline: %s: %s\n", what, strerror(errno));
    exit(1);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s GUEST_CODE_FILE SECONDS\n", argv[0]);
        return 2;
    }
    double seconds = atof(argv[2]);
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0)
        die("/dev/kvm");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0)
        die("KVM_CREATE_VM");
    uint8_t *ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                        -1, 0);
    if (ram == MAP_FAILED)
        die("mmap ram");
    FILE *code = fopen(argv[1], "rb");
    if (!code)
        die(argv[1]);
    size_t len = fread(ram + CODE_ADDR, 1, RAM_SIZE - CODE_ADDR, code);
    fclose(code);
    if (len == 0)
        die("empty guest code");
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = RAM_SIZE,
        .userspace_addr = (uint64_t)(uintptr_t)ram,
    };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
        die("KVM_SET_USER_MEMORY_REGION");
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0)
        die("KVM_CREATE_VCPU");
    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (run_size < 0)
        die("KVM_GET_VCPU_MMAP_SIZE");
    struct kvm_run *run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED,
                               vcpu, 0);
    if (run == MAP_FAILED)
        die("mmap kvm_run");
    struct kvm_sregs sregs;
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
        die("KVM_GET_SREGS");
    struct kvm_segment *segs[] = {&sregs.cs, &sregs.ds, &sregs.es, &sregs.fs, &sregs.gs,
                                  &sregs.ss};
    for (size_t i = 0; i < sizeof(segs) / sizeof(segs[0]); i++) {
        segs[i]->base = 0;
        segs[i]->selector = 0;
    }
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
        die("KVM_SET_SREGS");
    struct kvm_regs regs;
    memset(&regs, 0, sizeof(regs));
    regs.rip = CODE_ADDR;
    regs.rflags = 0x2;
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
        die("KVM_SET_REGS");

    unsigned long long exits = 0, bytes = 0;
    double start = now(), elapsed = 0;
    for (;;) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0)
            die("KVM_RUN");
        if (run->exit_reason != KVM_EXIT_MMIO || !run->mmio.is_write ||
            run->mmio.phys_addr != UART) {
            fprintf(stderr, "kvm_exits_baseline: unexpected exit %u\n", run->exit_reason);
            return 1;
        }
        bytes += run->mmio.data[0] != 0;
        exits++;
        if ((exits & 1023) == 0) {
            elapsed = now() - start;
            if (elapsed >= seconds)
                break;
        }
    }
    printf("%llu %.6f\n", exits, elapsed);
    return bytes == exits ? 0 : 1;
}
