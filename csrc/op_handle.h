// Typed handles of i2i_fast's own ops, for the C++ autograd nodes that call them through the
// dispatcher (so that each call reaches the kernel of its device, or a Python composite).
#pragma once
#include <ATen/core/dispatch/Dispatcher.h>

namespace i2i {

// The handle of op `name` ("i2i_fast::op") with C++ signature Sig; throws if it is not declared.
template <class Sig>
c10::TypedOperatorHandle<Sig> op_of(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

}  // namespace i2i
