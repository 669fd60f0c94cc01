// The one schema file: every i2i_fast operator is declared here. CPU kernels and the C++
// autograd nodes (Autograd key) register in csrc/<op>.cpp, CUDA kernels in kernels/<op>.cu; the
// fake tensors, the create_graph backward composites (*_ref_grads) and reflection_pad_conv2d are
// Python (i2i_fast/ops/<op>.py). Integer arguments named act, kind and reduction
// take the codes of csrc/codes.h (i2i_fast/codes.py), exported below as i2i_fast._C.CODES.
#include <Python.h>
#include <torch/library.h>

#include "codes.h"

TORCH_LIBRARY(i2i_fast, m) {
  // Instance norm with fused epilogue:
  //   out = reflection_pad(act(((x - mean) * rstd) * w + b) + residual, pad)
  // Statistics come from x per (n, c) plane (biased variance), or from running_mean/var (C,)
  // when those are given (eval mode). Returns (out, mean, var): out (N, C, H + 2 pad, W + 2 pad)
  // in x's memory format, mean/var of shape (N, C) in fp32 (fp64 for fp64 x). act: an Activation
  // (leaky_relu takes slope). pad: 0 <= pad < H, W (CycleGAN's IN-ReLU-ReflectionPad).
  m.def(
      "instance_norm_fwd(Tensor x, Tensor? weight, Tensor? bias, Tensor? residual, "
      "Tensor? running_mean, Tensor? running_var, float eps, int act, float slope, int pad=0) "
      "-> (Tensor, Tensor, Tensor)");
  // Gradient of instance_norm_fwd w.r.t. x, weight and bias (the latter two (C,), or (N*C,) for
  // per-plane affine, in the stats dtype, reduced without atomics; both empty (0,) when neither
  // weight nor bias is given). input_stats=False: mean/var were running stats. grad has the
  // padded output's shape; its mirror sources are gathered in a fixed order (no atomics).
  m.def(
      "instance_norm_bwd(Tensor grad, Tensor x, Tensor mean, Tensor var, Tensor? weight, "
      "Tensor? bias, float eps, int act, float slope, bool input_stats, int pad=0) "
      "-> (Tensor, Tensor, Tensor)");
  // create_graph backward of instance_norm_fwd: the reference formulas differentiated by
  // autograd (implemented in Python, i2i_fast/ops/instance_norm.py). Returns d x, d weight, d bias (an empty
  // tensor where an input needs no gradient).
  m.def(
      "instance_norm_ref_grads(Tensor grad, Tensor x, Tensor mean, Tensor var, Tensor? weight, "
      "Tensor? bias, float eps, int act, float slope, bool input_stats, int pad) -> Tensor[]");

  // ---- plane-affine normalization family (ILN, AdaLIN, MUNIT LayerNorm, batch norm, instance
  // norm where Triton splits its planes): stats -> per-plane (scale, shift) from plane_norm_coefs ->
  // apply (csrc/plane_norm.h).
  // Mean and biased variance of every (n, c) plane, (N, C) in fp32 (fp64 for fp64 x).
  m.def("plane_norm_stats(Tensor x) -> (Tensor, Tensor)");
  // out = reflection_pad(act((x - mean) * scale + shift) + residual, pad); mean/scale/shift
  // (N, C). Output (N, C, H + 2 pad, W + 2 pad) in x's memory format.
  m.def(
      "plane_norm_apply(Tensor x, Tensor mean, Tensor scale, Tensor shift, Tensor? residual, int act, "
      "float slope, int pad) -> Tensor");
  // Backward, pass 1: per-plane (sum dz, sum dz * (x - mean)) as (N, C, 2), dz = dL/dz with
  // the padded gradient folded back (no atomics).
  m.def(
      "plane_norm_apply_sums(Tensor grad, Tensor x, Tensor mean, Tensor scale, Tensor shift, int act, "
      "float slope, int pad) -> Tensor");
  // Backward, pass 2: grad x = scale * dz + c0 + c1 * (x - mean), c0/c1 (N, C) from the
  // coefficients' own backward.
  m.def(
      "plane_norm_apply_bwd(Tensor grad, Tensor x, Tensor mean, Tensor scale, Tensor shift, Tensor c0, "
      "Tensor c1, int act, float slope, int pad) -> Tensor");
  // The (N, C) coefficient math (csrc/plane_norm_coefs.h): (scale, shift) from plane statistics;
  // kind: a NormKind (instance norm, ILN/adaILN, MUNIT LN, training-mode batch norm with its
  // statistics merged over the batch).
  m.def(
      "plane_norm_coefs(Tensor mean, Tensor var, Tensor? rho, Tensor? gamma, Tensor? beta, int kind, "
      "int hw, float eps) -> (Tensor, Tensor)");
  // Its backward from the plane_norm_apply_sums output: (c0, c1, d rho, d gamma, d beta); each
  // parameter gradient has its parameter's numel, empty (0,) when the parameter is absent.
  m.def(
      "plane_norm_coefs_bwd(Tensor mean, Tensor var, Tensor? rho, Tensor? gamma, Tensor? beta, "
      "Tensor sums, int kind, int hw, float eps) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The running statistics of a training forward, updated in place from its plane statistics
  // (N, C) with torch's formulas (plane_norm_coefs.h running_channel): kind BATCH, batch norm's
  // (unbiased variance over N * hw values); kind INSTANCE, instance norm's (each plane's update
  // averaged over N). num_batches_tracked, when given, is incremented in the same launch.
  m.def(
      "plane_norm_update_running(Tensor(a!) running_mean, Tensor(b!) running_var, "
      "Tensor(c!)? num_batches_tracked, Tensor mean, Tensor var, int kind, int hw, float momentum) -> ()");
  // The whole norm: statistics (or running_mean/var, eval-mode instance/batch norm) ->
  // plane_norm_coefs -> plane_norm_apply, with a C++ autograd node (backward: plane_norm_apply_sums ->
  // plane_norm_coefs_bwd -> plane_norm_apply_bwd; gradients for x, rho, gamma, beta, residual).
  // Returns (out, mean, var): also the per-plane statistics used (N, C), not differentiable,
  // from which the callers update running statistics without another pass over x.
  m.def(
      "plane_norm(Tensor x, Tensor? rho, Tensor? gamma, Tensor? beta, Tensor? residual, "
      "Tensor? running_mean, Tensor? running_var, int kind, float eps, int act, float slope, "
      "int pad) -> (Tensor, Tensor, Tensor)");
  // create_graph backward of plane_norm: the reference formulas differentiated by autograd
  // (implemented in Python, i2i_fast/ops/plane_norm.py). Returns d x, d rho, d gamma, d beta (an empty
  // tensor where an input needs no gradient).
  m.def(
      "plane_norm_ref_grads(Tensor grad, Tensor x, Tensor? rho, Tensor? gamma, Tensor? beta, "
      "Tensor? running_mean, Tensor? running_var, int kind, float eps, int act, float slope, "
      "int pad) -> Tensor[]");
  // ---- reflection pad ----
  // out = act(x) reflect-padded by pad = (left, right, top, bottom), torch's semantics (each pad
  // >= 0 and < the size of its axis); NCHW or channels_last, the output keeps the layout.
  // act: Activation NONE, RELU or LEAKY_RELU (takes slope); TANH is rejected.
  m.def("reflection_pad2d_fwd(Tensor x, int[4] pad, int act=0, float slope=0.) -> Tensor");
  // Gradient of reflection_pad2d_fwd: grad (N, C, H+top+bottom, W+left+right) -> (N, C, H, W),
  // times act'(x) when act is not NONE (x: the forward's input, needed then, ignored otherwise).
  // A gather (each input pixel sums the <= 3x3 padded positions that read it), no atomics.
  m.def("reflection_pad2d_bwd(Tensor grad, int[4] pad, Tensor? x=None, int act=0, float slope=0.) -> Tensor");
  // conv2d(reflection_pad2d(x, padding), weight, bias, stride) without the padded copy:
  // zero-padded aten convolution (cuDNN / mkldnn) whose border outputs are recomputed from thin
  // reflect-padded strips. Implemented in Python (i2i_fast/ops/reflection_pad_conv.py) for CPU and CUDA.
  m.def("reflection_pad_conv2d(Tensor x, Tensor weight, Tensor? bias, int padding, int stride) -> Tensor");
  // Gradients (x, weight, bias) of reflection_pad_conv2d; mask says which are wanted (the
  // others come back as empty tensors).
  m.def(
      "reflection_pad_conv2d_bwd(Tensor grad, Tensor x, Tensor weight, int padding, int stride, "
      "bool[3] mask) -> (Tensor, Tensor, Tensor)");
  // ---- end reflection pad ----
  // ---- spectral norm (csrc/spectral_norm.{h,cpp}, kernels/spectral_norm.cu,
  // triton/spectral_norm.py): the weight of torch.nn.utils.spectral_norm from the (O, K) weight
  // matrix and the power-iteration vectors u (O,), v (K,) (constants for autograd):
  // sigma = u . (W v), out = W / sigma. Returns (out, sigma), sigma 0-d fp32 (fp64 for fp64).
  m.def("spectral_norm_scale(Tensor weight, Tensor u, Tensor v) -> (Tensor, Tensor)");
  // Its weight gradient: grad / sigma - (sum(grad * W) / sigma^2) u v^T.
  m.def("spectral_norm_scale_bwd(Tensor grad, Tensor weight, Tensor u, Tensor v, Tensor sigma) -> Tensor");
  // ---- losses (csrc/loss.{h,cpp}, kernels/loss.cu, triton/loss.py) ----
  // Many loss terms reduced in one launch. kind: a LossKind, the term f(x) with parameter a
  // (csrc/loss.h); y is given exactly for the kinds that read a target tensor (ABS,
  // BCE_TARGET). reduction: a Reduction; params[t] = a, weights[t] = w. Returns (outs, grads):
  // outs = [loss] (0-d, x's dtype) or, for none, w_t * f(x_t) per term; grads[t] = d loss /
  // d x_t (x_t's dtype, contiguous) when need_grad, else empty. Deterministic (no atomics).
  m.def(
      "loss_fwd(Tensor[] x, Tensor[] y, float[] params, float[] weights, int kind, "
      "int reduction, bool need_grad) -> (Tensor[], Tensor[])");
  // Backward of loss_fwd: out_k = sign[k] * saved[index[k]] * grad_out, with grad_outs one
  // 0-d tensor (mean/sum) or one tensor per saved gradient (reduction none). One launch.
  m.def("loss_bwd(Tensor[] grad_outs, Tensor[] saved, int[] index, float[] sign) -> Tensor[]");
}

#ifndef I2I_FAST_WITH_CUDA
#define I2I_FAST_WITH_CUDA 0
#endif

// A plain extension module: importing it registers the operators above. WITH_CUDA tells
// Python whether kernels/*.cu were compiled in; CODES is codes.h's table as
// {enum name: {member name: value}}, for tests/test_codes.py to compare with i2i_fast/codes.py.
static struct PyModuleDef i2i_fast_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

// New reference to the CODES dict, or null with a Python error set.
static PyObject* code_table() {
  PyObject* codes = PyDict_New();
  if (codes == nullptr) return nullptr;
  for (const i2i::CodeName& c : i2i::kCodeTable) {
    PyObject* group = PyDict_GetItemString(codes, c.group);  // borrowed
    if (group == nullptr) {
      group = PyDict_New();
      const bool ok = group != nullptr && PyDict_SetItemString(codes, c.group, group) == 0;
      Py_XDECREF(group);  // codes holds it
      if (!ok) break;
    }
    PyObject* value = PyLong_FromLong(c.value);
    const bool ok = value != nullptr && PyDict_SetItemString(group, c.name, value) == 0;
    Py_XDECREF(value);
    if (!ok) break;
  }
  if (PyErr_Occurred()) Py_CLEAR(codes);
  return codes;
}

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&i2i_fast_module);
  if (m == nullptr) return nullptr;
  PyObject* codes = code_table();
  if (PyModule_AddIntConstant(m, "WITH_CUDA", I2I_FAST_WITH_CUDA) < 0 || codes == nullptr ||
      PyModule_AddObject(m, "CODES", codes) < 0) {
    Py_XDECREF(codes);
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
