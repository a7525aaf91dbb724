"""The KVM userspace ABI used by kvmpy, as a cffi cdef in ABI mode (no compiler at run time).

Inert: structs and constants only, transcribed from ``linux/kvm.h`` and the riscv64
``asm/kvm.h`` (Linux 6.10 uapi; fields newer than 6.1 are marked).  Layouts are computed by
cffi from the declarations, which works on a riscv64 host with only ``_cffi_backend``;
``tests/accel/kvm/test_abi.py`` checks every size, offset and ioctl number against the real
riscv64 headers.  Only ``kvmpy.accel.kvm`` imports this module.

The declarations are parsed on first use of :data:`ffi` (cffi's C parser costs ~20 ms of
start-up, which a process that never opens ``/dev/kvm`` does not pay); the ioctl numbers take
their argument sizes from :data:`STRUCT_SIZES`, which the tests compare with cffi's layouts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class LazyFFI:
    """A ``cffi.FFI`` built by ``build`` on first attribute access, then used as itself."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build = build
        self._ffi: Any = None

    def get(self) -> Any:
        """The real ``cffi.FFI`` (built now if needed)."""
        if self._ffi is None:
            self._ffi = self._build()
        return self._ffi

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


CDEF = """
struct kvm_userspace_memory_region {
    uint32_t slot;
    uint32_t flags;
    uint64_t guest_phys_addr;
    uint64_t memory_size;
    uint64_t userspace_addr;
};

struct kvm_one_reg {
    uint64_t id;
    uint64_t addr;
};

struct kvm_reg_list {
    uint64_t n;
    uint64_t reg[];
};

struct kvm_interrupt {
    uint32_t irq;
};

struct kvm_mp_state {
    uint32_t mp_state;
};

struct kvm_dirty_log {
    uint32_t slot;
    uint32_t padding1;
    union {
        void *dirty_bitmap;
        uint64_t padding2;
    };
};

struct kvm_enable_cap {
    uint32_t cap;
    uint32_t flags;
    uint64_t args[4];
    uint8_t pad[64];
};

struct kvm_ioeventfd {
    uint64_t datamatch;
    uint64_t addr;
    uint32_t len;
    int32_t fd;
    uint32_t flags;
    uint8_t pad[36];
};

struct kvm_irqfd {
    uint32_t fd;
    uint32_t gsi;
    uint32_t flags;
    uint32_t resamplefd;
    uint8_t pad[16];
};

struct kvm_run {
    uint8_t request_interrupt_window;
    uint8_t immediate_exit;
    uint8_t padding1[6];
    uint32_t exit_reason;
    uint8_t ready_for_interrupt_injection;
    uint8_t if_flag;
    uint16_t flags;
    uint64_t cr8;
    uint64_t apic_base;
    union {
        struct {
            uint64_t hardware_exit_reason;
        } hw;
        struct {
            uint64_t hardware_entry_failure_reason;
            uint32_t cpu;
        } fail_entry;
        struct {
            uint32_t exception;
            uint32_t error_code;
        } ex;
        struct {
            uint8_t direction;
            uint8_t size;
            uint16_t port;
            uint32_t count;
            uint64_t data_offset;
        } io;
        struct {
            uint64_t phys_addr;
            uint8_t data[8];
            uint32_t len;
            uint8_t is_write;
        } mmio;
        struct {
            uint32_t suberror;
            uint32_t ndata;
            uint64_t data[16];
        } internal;
        struct {
            uint32_t type;
            uint32_t ndata;
            union {
                uint64_t flags;
                uint64_t data[16];
            };
        } system_event;
        struct {
            unsigned long extension_id;
            unsigned long function_id;
            unsigned long args[6];
            unsigned long ret[2];
        } riscv_sbi;
        struct {
            unsigned long csr_num;
            unsigned long new_value;
            unsigned long write_mask;
            unsigned long ret_value;
        } riscv_csr;
        char padding[256];
    };
    uint64_t kvm_valid_regs;
    uint64_t kvm_dirty_regs;
    union {
        char padding[2048];
    } s;
};

/* riscv64 asm/kvm.h: ONE_REG register files (index = offsetof / sizeof(unsigned long)) */
struct kvm_riscv_config {
    unsigned long isa;
    unsigned long zicbom_block_size;
    unsigned long mvendorid;          /* 6.3 */
    unsigned long marchid;            /* 6.3 */
    unsigned long mimpid;             /* 6.3 */
    unsigned long zicboz_block_size;  /* 6.4 */
    unsigned long satp_mode;          /* 6.5 */
};

struct kvm_riscv_core {
    struct {
        unsigned long pc, ra, sp, gp, tp, t0, t1, t2, s0, s1;
        unsigned long a0, a1, a2, a3, a4, a5, a6, a7;
        unsigned long s2, s3, s4, s5, s6, s7, s8, s9, s10, s11;
        unsigned long t3, t4, t5, t6;
    } regs;
    unsigned long mode;
};

struct kvm_riscv_csr {
    unsigned long sstatus;
    unsigned long sie;
    unsigned long stvec;
    unsigned long sscratch;
    unsigned long sepc;
    unsigned long scause;
    unsigned long stval;
    unsigned long sip;
    unsigned long satp;
    unsigned long scounteren;
    unsigned long senvcfg;            /* 6.6 */
};

struct kvm_riscv_timer {
    uint64_t frequency;
    uint64_t time;
    uint64_t compare;
    uint64_t state;
};
"""


def _build_ffi() -> Any:
    import cffi

    built = cffi.FFI()
    built.cdef(CDEF)
    return built


ffi: Any = LazyFFI(_build_ffi)
"""The ABI's ``cffi.FFI`` (parsed on first use)."""

KVM_API_VERSION = 12

# KVM_CHECK_EXTENSION
KVM_CAP_IRQCHIP = 0
KVM_CAP_USER_MEMORY = 3
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_MP_STATE = 14
KVM_CAP_SYNC_MMU = 16
KVM_CAP_SET_GUEST_DEBUG = 23
KVM_CAP_IRQFD = 32
KVM_CAP_IOEVENTFD = 36
KVM_CAP_ONE_REG = 70
KVM_CAP_READONLY_MEM = 81
KVM_CAP_IMMEDIATE_EXIT = 136

# kvm_run.exit_reason
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24
KVM_EXIT_RISCV_SBI = 35
KVM_EXIT_RISCV_CSR = 36

# kvm_run.system_event.type
KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
KVM_SYSTEM_EVENT_CRASH = 3
KVM_SYSTEM_EVENT_WAKEUP = 4
KVM_SYSTEM_EVENT_SUSPEND = 5

# kvm_userspace_memory_region.flags
KVM_MEM_LOG_DIRTY_PAGES = 1
KVM_MEM_READONLY = 2

# kvm_ioeventfd.flags, kvm_irqfd.flags
KVM_IOEVENTFD_FLAG_DATAMATCH = 1
KVM_IOEVENTFD_FLAG_PIO = 2
KVM_IOEVENTFD_FLAG_DEASSIGN = 4
KVM_IRQFD_FLAG_DEASSIGN = 1

# kvm_guest_debug.control
KVM_GUESTDBG_ENABLE = 0x1
KVM_GUESTDBG_USE_SW_BP = 0x10000

# kvm_mp_state.mp_state
KVM_MP_STATE_RUNNABLE = 0
KVM_MP_STATE_STOPPED = 5

# riscv64 asm/kvm.h: kvm_interrupt.irq (the -1U / -2U of the header)
KVM_INTERRUPT_SET = 0xFFFFFFFF
KVM_INTERRUPT_UNSET = 0xFFFFFFFE
KVM_RISCV_MODE_S = 1
KVM_RISCV_MODE_U = 0
KVM_RISCV_TIMER_STATE_OFF = 0
KVM_RISCV_TIMER_STATE_ON = 1

# asm-generic/ioctl.h: nr bits 0-7, type bits 8-15, size bits 16-29, direction bits 30-31.
KVMIO = 0xAE
_IOC_WRITE = 1
_IOC_READ = 2


STRUCT_SIZES: dict[str, int] = {
    "struct kvm_dirty_log": 16,
    "struct kvm_userspace_memory_region": 32,
    "struct kvm_interrupt": 4,
    "struct kvm_mp_state": 4,
    "struct kvm_enable_cap": 104,
    "struct kvm_one_reg": 16,
    "struct kvm_reg_list": 8,
    "struct kvm_ioeventfd": 64,
    "struct kvm_irqfd": 32,
}
"""sizeof() of the ioctl argument structs (LP64), equal to ``ffi.sizeof`` (tested)."""


def _ioc(direction: int, nr: int, struct: str | None) -> int:
    size = STRUCT_SIZES[struct] if struct is not None else 0
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


# ioctl numbers, one per line (name = direction, nr, argument struct).
KVM_GET_API_VERSION = _ioc(0, 0x00, None)
KVM_CREATE_VM = _ioc(0, 0x01, None)
KVM_CHECK_EXTENSION = _ioc(0, 0x03, None)
KVM_GET_VCPU_MMAP_SIZE = _ioc(0, 0x04, None)
KVM_CREATE_VCPU = _ioc(0, 0x41, None)
KVM_GET_DIRTY_LOG = _ioc(_IOC_WRITE, 0x42, "struct kvm_dirty_log")
KVM_SET_USER_MEMORY_REGION = _ioc(_IOC_WRITE, 0x46, "struct kvm_userspace_memory_region")
KVM_IRQFD = _ioc(_IOC_WRITE, 0x76, "struct kvm_irqfd")
KVM_IOEVENTFD = _ioc(_IOC_WRITE, 0x79, "struct kvm_ioeventfd")
KVM_RUN = _ioc(0, 0x80, None)
KVM_INTERRUPT = _ioc(_IOC_WRITE, 0x86, "struct kvm_interrupt")
KVM_GET_MP_STATE = _ioc(_IOC_READ, 0x98, "struct kvm_mp_state")
KVM_SET_MP_STATE = _ioc(_IOC_WRITE, 0x99, "struct kvm_mp_state")
KVM_SET_GUEST_DEBUG = (_IOC_WRITE << 30) | (8 << 16) | (KVMIO << 8) | 0x9B
"""_IOW(KVMIO, 0x9b, struct kvm_guest_debug): control, pad and riscv64's empty
kvm_guest_debug_arch, 8 bytes (Linux 6.10+; earlier RISC-V KVMs answer EINVAL)."""
KVM_ENABLE_CAP = _ioc(_IOC_WRITE, 0xA3, "struct kvm_enable_cap")
KVM_GET_ONE_REG = _ioc(_IOC_WRITE, 0xAB, "struct kvm_one_reg")
KVM_SET_ONE_REG = _ioc(_IOC_WRITE, 0xAC, "struct kvm_one_reg")
KVM_GET_REG_LIST = _ioc(_IOC_READ | _IOC_WRITE, 0xB0, "struct kvm_reg_list")

IOCTL_NAMES: dict[int, str] = {
    KVM_GET_API_VERSION: "KVM_GET_API_VERSION",
    KVM_CREATE_VM: "KVM_CREATE_VM",
    KVM_CHECK_EXTENSION: "KVM_CHECK_EXTENSION",
    KVM_GET_VCPU_MMAP_SIZE: "KVM_GET_VCPU_MMAP_SIZE",
    KVM_CREATE_VCPU: "KVM_CREATE_VCPU",
    KVM_GET_DIRTY_LOG: "KVM_GET_DIRTY_LOG",
    KVM_SET_USER_MEMORY_REGION: "KVM_SET_USER_MEMORY_REGION",
    KVM_IRQFD: "KVM_IRQFD",
    KVM_IOEVENTFD: "KVM_IOEVENTFD",
    KVM_RUN: "KVM_RUN",
    KVM_INTERRUPT: "KVM_INTERRUPT",
    KVM_GET_MP_STATE: "KVM_GET_MP_STATE",
    KVM_SET_MP_STATE: "KVM_SET_MP_STATE",
    KVM_SET_GUEST_DEBUG: "KVM_SET_GUEST_DEBUG",
    KVM_ENABLE_CAP: "KVM_ENABLE_CAP",
    KVM_GET_ONE_REG: "KVM_GET_ONE_REG",
    KVM_SET_ONE_REG: "KVM_SET_ONE_REG",
    KVM_GET_REG_LIST: "KVM_GET_REG_LIST",
}
"""ioctl number -> name, for error messages."""

# ONE_REG ids (linux/kvm.h and riscv64 asm/kvm.h):
# id = KVM_REG_RISCV | size | type << 24 | subtype << 16 | index.
KVM_REG_RISCV = 0x8000000000000000
KVM_REG_SIZE_SHIFT = 52
KVM_REG_SIZE_U32 = 0x0020000000000000
KVM_REG_SIZE_U64 = 0x0030000000000000
KVM_REG_RISCV_TYPE_SHIFT = 24
KVM_REG_RISCV_SUBTYPE_SHIFT = 16
KVM_REG_RISCV_CONFIG = 1
KVM_REG_RISCV_CORE = 2
KVM_REG_RISCV_CSR = 3
KVM_REG_RISCV_TIMER = 4
KVM_REG_RISCV_FP_F = 5
KVM_REG_RISCV_FP_D = 6
KVM_REG_RISCV_ISA_EXT = 7
KVM_REG_RISCV_SBI_EXT = 8
KVM_REG_RISCV_ISA_SINGLE = 0
KVM_REG_RISCV_SBI_SINGLE = 0
KVM_REG_RISCV_CSR_GENERAL = 0

# KVM_RISCV_SBI_EXT_* single-register indices (6.4+; DBCN 6.8+).
KVM_RISCV_SBI_EXT_DBCN = 9

# KVM_RISCV_ISA_EXT_* single-register indices, in kernel order (6.1 has 0..11; 6.10 0..54;
# linux-next 55..70).
KVM_RISCV_ISA_EXT_NAMES: tuple[str, ...] = (
    "a", "c", "d", "f", "h", "i", "m", "svpbmt", "sstc", "svinval", "zihintpause", "zicbom",
    "zicboz", "zbb", "ssaia", "v", "svnapot", "zba", "zbs", "zicntr", "zicsr", "zifencei",
    "zihpm", "smstateen", "zicond", "zbc", "zbkb", "zbkc", "zbkx", "zknd", "zkne", "zknh",
    "zkr", "zksed", "zksh", "zkt", "zvbb", "zvbc", "zvkb", "zvkg", "zvkned", "zvknha",
    "zvknhb", "zvksed", "zvksh", "zvkt", "zfh", "zfhmin", "zihintntl", "zvfh", "zvfhmin",
    "zfa", "ztso", "zacas", "sscofpmf", "zimop", "zca", "zcb", "zcd", "zcf", "zcmop", "zawrs",
    "smnpm", "ssnpm", "svade", "svadu", "svvptc", "zabha", "ziccrse", "zaamo", "zalrsc",
)
