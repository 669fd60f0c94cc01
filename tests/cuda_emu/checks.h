// Between the emulation's scheduler (runtime.cpp) and its checks in streams.cpp: the poison of
// fiber stacks, and the Python bindings of the switches.
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

bool poison_enabled();
// Whether a is in memory freed while work was queued and not yet released (a use after free).
bool freed_memory(uintptr_t a);
// Fills the top of a fiber stack (the depth blocks have used so far) before a block.
void poison_stack(char* stack, size_t size);
// After a block: a fiber that went below the poisoned depth makes later blocks poison deeper.
void stack_overran(const char* stack, size_t size);
void bind_checks(pybind11::module_& m);

}  // namespace i2i_emu
