// Between the emulation's scheduler (runtime.cpp), its checks in streams.cpp and the access checks
// (check.cpp): the poisons, the graph replays' shadow, and the Python bindings of the switches.
#pragma once
#include <cstddef>
#include <cstdint>

namespace pybind11 {
class module_;
}

namespace i2i_emu {

// One byte for every poison (fiber stacks, new tensors, memory freed while work is queued):
// 0xFF.. is NaN in fp16, bf16, fp32 and fp64 (an allocator sees bytes, not a dtype), -1 in integers.
constexpr unsigned char kStackPoisonByte = 0xFF;
// Fiber stacks get their own poison, so that a value computed from an uninitialized local can be
// told from one read from unwritten memory (which tests expect to see as NaN): 0x7FFF repeated,
// also NaN in fp16, bf16, fp32 and fp64, and a payload (0x7FFF7FFF in fp32) that arithmetic
// carries to the stored result. The compile-time pattern of uninitialized locals is gcc's 0xFE.
constexpr uint64_t kStackPoisonWord = 0x7FFF7FFF7FFF7FFFull;
constexpr uint32_t kStackPoison32 = uint32_t(kStackPoisonWord);
constexpr unsigned char kLocalPatternByte = 0xFE;   // -ftrivial-auto-var-init=pattern (gcc)
// Fills [p, p + n) (8-byte aligned, n a multiple of 8) with the stack poison.
void fill_stack_poison(char* p, size_t n);
// Whether the byte at p still holds the stack poison.
bool stack_poison_at(const char* p);

bool poison_enabled();
// Whether a is in memory freed while work was queued and not yet released (a use after free).
bool freed_memory(uintptr_t a);
// Fills the top of a fiber stack (the depth blocks have used so far) before a block.
void poison_stack(char* stack, size_t size);
// After a block: a fiber that went below the poisoned depth makes later blocks poison deeper.
void stack_overran(const char* stack, size_t size);
void bind_checks(pybind11::module_& m);

namespace check {
// Graph replays (streams.cpp -> check.cpp). While graph `id` replays, the access checks record
// which global granules its kernels and memsets write; a read of one that this replay has not
// written yet, written by the previous replay and unchanged since, is reported: the replay
// depends on state its last run left (a reset the capture did not record).
void replay_begin(int id);
void replay_end();
void replay_wrote(const void* p, size_t n, const char* what);   // a memset or poison node ran
void graph_forget(int id);
}  // namespace check

}  // namespace i2i_emu
