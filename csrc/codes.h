// The integer codes the operators take, named once: the same values as i2i_fast/codes.py. The
// extension exports kCodeTable as i2i_fast._C.CODES and tests/test_codes.py checks that both
// sides agree. Plain enums (not enum class): the kernels carry the codes in int fields and as
// template constants (std::integral_constant<int, kRelu>), in .cpp, .cu and the CPU emulation.
#pragma once

namespace i2i {

// The activation fused after a norm (act(z)) or before a reflection pad (pad(act(x))).
enum Activation : int { kActNone = 0, kRelu = 1, kLeakyRelu = 2, kTanh = 3 };

// How the plane-norm family turns plane statistics into per-plane (scale, shift).
enum NormKind : int {
  kInstanceNorm = 0,  // each (n, c) plane alone
  kIln = 1,           // U-GAT-IT ILN / adaILN: rho mixes instance and layer statistics
  kLayerNorm = 2,     // MUNIT LayerNorm: one mean / unbiased std per sample, eps outside
  kBatchNorm = 3,     // training-mode batch norm: statistics merged over the batch
};

// The elementwise term f(x) of a loss (csrc/loss.h).
enum LossKind : int { kSquare = 0, kBce = 1, kHinge = 2, kLinear = 3, kSoftplus = 4, kAbs = 5, kBceTarget = 6 };

enum Reduction : int { kReduceNone = 0, kReduceMean = 1, kReduceSum = 2 };

// Every code by enum and member name as Python spells them (i2i_fast._C.CODES).
struct CodeName {
  const char* group;
  const char* name;
  int value;
};
inline constexpr CodeName kCodeTable[] = {
    {"Activation", "NONE", kActNone},
    {"Activation", "RELU", kRelu},
    {"Activation", "LEAKY_RELU", kLeakyRelu},
    {"Activation", "TANH", kTanh},
    {"NormKind", "INSTANCE", kInstanceNorm},
    {"NormKind", "ILN", kIln},
    {"NormKind", "LAYER", kLayerNorm},
    {"NormKind", "BATCH", kBatchNorm},
    {"LossKind", "SQUARE", kSquare},
    {"LossKind", "BCE", kBce},
    {"LossKind", "HINGE", kHinge},
    {"LossKind", "LINEAR", kLinear},
    {"LossKind", "SOFTPLUS", kSoftplus},
    {"LossKind", "ABS", kAbs},
    {"LossKind", "BCE_TARGET", kBceTarget},
    {"Reduction", "NONE", kReduceNone},
    {"Reduction", "MEAN", kReduceMean},
    {"Reduction", "SUM", kReduceSum},
};

}  // namespace i2i
