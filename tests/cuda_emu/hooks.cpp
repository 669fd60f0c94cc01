// gcc -fsanitize=thread callbacks of the instrumented variants (plain and trace): no sanitizer
// runtime is linked, these are it. Every load, store, atomic and fence of the emulated kernels
// goes to the checks (check.cpp) and, in the traced variant, to the memory tracer (trace.cpp).
// Plain accesses are reported at their call site; atomics are performed (as the compiler asked,
// seq_cst) and reported as a read and a write. Hidden visibility: two instrumented variants
// loaded in one process each call their own hooks.
#include "check.h"

#define I2I_HOOK extern "C" __attribute__((no_sanitize_thread, visibility("hidden")))
#define I2I_PC reinterpret_cast<uintptr_t>(__builtin_return_address(0))

// One call per hook into check.cpp, which guards against its own (instrumented) callees and
// reads its thread-local state once: a thread_local read is a TLS descriptor call here.
#define on_access i2i_emu::check::access
#define on_atomic i2i_emu::check::atomic

I2I_HOOK void __tsan_init() {}
I2I_HOOK void __tsan_func_entry(void*) {}
I2I_HOOK void __tsan_func_exit() {}
I2I_HOOK void __tsan_vptr_update(void**, void*) {}
I2I_HOOK void __tsan_vptr_read(void**) {}

#define I2I_RW(n)                                                                         \
  I2I_HOOK void __tsan_read##n(void* a) { on_access(uintptr_t(a), n, false, I2I_PC); }           \
  I2I_HOOK void __tsan_write##n(void* a) { on_access(uintptr_t(a), n, true, I2I_PC); }            \
  I2I_HOOK void __tsan_unaligned_read##n(void* a) { on_access(uintptr_t(a), n, false, I2I_PC); } \
  I2I_HOOK void __tsan_unaligned_write##n(void* a) { on_access(uintptr_t(a), n, true, I2I_PC); }  \
  I2I_HOOK void __tsan_volatile_read##n(void* a) { on_access(uintptr_t(a), n, false, I2I_PC); }  \
  I2I_HOOK void __tsan_volatile_write##n(void* a) { on_access(uintptr_t(a), n, true, I2I_PC); }
I2I_RW(1) I2I_RW(2) I2I_RW(4) I2I_RW(8) I2I_RW(16)
I2I_HOOK void __tsan_read_range(void* a, unsigned long n) { on_access(uintptr_t(a), uint32_t(n), false, I2I_PC); }
I2I_HOOK void __tsan_write_range(void* a, unsigned long n) { on_access(uintptr_t(a), uint32_t(n), true, I2I_PC); }

// gcc passes the memory order as an int (__ATOMIC_* values); the atomics run seq_cst.
#define I2I_ATOMICS(bits, T)                                                                         \
  I2I_HOOK T __tsan_atomic##bits##_load(const volatile T* a, int) {                                  \
    on_atomic(uintptr_t(a), sizeof(T), true, false, I2I_PC);                                         \
    return __atomic_load_n(a, __ATOMIC_SEQ_CST);                                                     \
  }                                                                                                  \
  I2I_HOOK void __tsan_atomic##bits##_store(volatile T* a, T v, int) {                               \
    on_atomic(uintptr_t(a), sizeof(T), false, true, I2I_PC);                                         \
    __atomic_store_n(a, v, __ATOMIC_SEQ_CST);                                                        \
  }                                                                                                  \
  I2I_ATOMIC_RMW(bits, T, exchange, exchange_n) I2I_ATOMIC_RMW(bits, T, fetch_add, fetch_add)        \
  I2I_ATOMIC_RMW(bits, T, fetch_sub, fetch_sub) I2I_ATOMIC_RMW(bits, T, fetch_and, fetch_and)        \
  I2I_ATOMIC_RMW(bits, T, fetch_or, fetch_or) I2I_ATOMIC_RMW(bits, T, fetch_xor, fetch_xor)          \
  I2I_ATOMIC_RMW(bits, T, fetch_nand, fetch_nand)                                                    \
  I2I_HOOK int __tsan_atomic##bits##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {   \
    on_atomic(uintptr_t(a), sizeof(T), true, true, I2I_PC);                                          \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);          \
  }                                                                                                  \
  I2I_HOOK int __tsan_atomic##bits##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {     \
    on_atomic(uintptr_t(a), sizeof(T), true, true, I2I_PC);                                          \
    return __atomic_compare_exchange_n(a, c, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);           \
  }                                                                                                  \
  I2I_HOOK T __tsan_atomic##bits##_compare_exchange_val(volatile T* a, T c, T v, int, int) {         \
    on_atomic(uintptr_t(a), sizeof(T), true, true, I2I_PC);                                          \
    __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                \
    return c;                                                                                        \
  }
#define I2I_ATOMIC_RMW(bits, T, op, builtin)                                   \
  I2I_HOOK T __tsan_atomic##bits##_##op(volatile T* a, T v, int) {             \
    on_atomic(uintptr_t(a), sizeof(T), true, true, I2I_PC);                    \
    return __atomic_##builtin(a, v, __ATOMIC_SEQ_CST);                         \
  }
I2I_ATOMICS(8, unsigned char) I2I_ATOMICS(16, unsigned short) I2I_ATOMICS(32, unsigned)
I2I_ATOMICS(64, unsigned long long)

// __threadfence() is std::atomic_thread_fence(seq_cst) in emu.h.
I2I_HOOK void __tsan_atomic_thread_fence(int) {
  i2i_emu::check::fence();
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
}
I2I_HOOK void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
