// oneDNN convolutions as XLA FFI handlers: forward, backward-data and backward-weights
// of an NHWC / HWIO convolution with explicit strides and (lo, hi) padding, float32 or
// bfloat16. ae_jax.models.onednn calls them through jax.ffi.ffi_call inside jitted
// programs, on CPU only.
//
// Activations stay in XLA's NHWC buffers (no copies); the kernel is reordered to the
// layout the chosen oneDNN implementation wants (a few KiB to a few MiB per call).
// Primitives are built once per shape and kept for the life of the process. XLA may run
// several calls at once (one per device of a pmap or mesh, or independent ops of one
// program), so each call brings its own scratchpad: the oneDNN wheel is built without
// concurrent-execution support, and its library-managed scratchpad is shared.

#include <omp.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

#include "nanobind/nanobind.h"
#include "nanobind/stl/string.h"
#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
namespace nb = nanobind;
using dnnl::memory;

namespace {

enum Kind : int { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

// Threads each call's OpenMP team may use; 0 means OpenMP's own default.
int g_num_threads = 0;

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Everything that fixes a primitive: the op, the element type and the conv's geometry.
using Key = std::tuple<int, int, std::array<int64_t, 15>>;

struct Geometry {
  int64_t n, h, w, c;        // input, NHWC
  int64_t oh, ow, oc;        // output, NHWC
  int64_t kh, kw;            // kernel, HWIO: [kh, kw, c, oc]
  int64_t sh, sw, plh, plw, phh, phw;

  memory::dims src() const { return {n, c, h, w}; }
  memory::dims dst() const { return {n, oc, oh, ow}; }
  memory::dims wei() const { return {oc, c, kh, kw}; }
  memory::dims strides() const { return {sh, sw}; }
  memory::dims pad_lo() const { return {plh, plw}; }
  memory::dims pad_hi() const { return {phh, phw}; }
  std::array<int64_t, 15> key() const { return {n, h, w, c, oh, ow, oc, kh, kw, sh, sw, plh, plw, phh, phw}; }
};

// One cached primitive: the conv itself and the reorder between XLA's HWIO kernel and
// the kernel layout the conv was built for (absent when they agree).
struct Entry {
  dnnl::primitive conv;
  memory::desc wei_user, wei_conv;
  bool reorder_needed = false;
  dnnl::reorder reorder;  // hwio -> conv layout (forward, backward-data), or back (backward-weights)
  std::string impl;       // oneDNN's name for the implementation it chose
  memory::desc scratchpad, reorder_scratchpad;
};

// This thread's scratchpad, grown to the largest any call on it has needed.
void* Scratchpad(size_t bytes) {
  struct Free { void operator()(void* p) const { std::free(p); } };
  thread_local std::unique_ptr<void, Free> buffer;
  thread_local size_t capacity = 0;
  if (bytes > capacity) {
    capacity = (bytes + 4095) / 4096 * 4096;
    buffer.reset(std::aligned_alloc(4096, capacity));
    if (!buffer) capacity = 0;
  }
  return buffer.get();
}

dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

std::mutex g_mutex;
std::map<Key, std::unique_ptr<Entry>> g_cache;

memory::data_type ToDnnl(ffi::DataType t) {
  switch (t) {
    case ffi::DataType::F32: return memory::data_type::f32;
    case ffi::DataType::BF16: return memory::data_type::bf16;
    default: return memory::data_type::undef;
  }
}

dnnl::convolution_forward::primitive_desc ForwardDesc(const Geometry& g, memory::data_type dt) {
  using tag = memory::format_tag;
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      memory::desc(g.src(), dt, tag::nhwc), memory::desc(g.wei(), dt, tag::any),
      memory::desc(g.dst(), dt, tag::nhwc), g.strides(), g.pad_lo(), g.pad_hi(), UserScratchpad());
}

Entry* Lookup(Kind kind, const Geometry& g, memory::data_type dt) {
  std::lock_guard<std::mutex> lock(g_mutex);
  Key key{kind, static_cast<int>(dt), g.key()};
  auto it = g_cache.find(key);
  if (it != g_cache.end()) return it->second.get();
  using tag = memory::format_tag;
  auto entry = std::make_unique<Entry>();
  entry->wei_user = memory::desc(g.wei(), dt, tag::hwio);
  auto fwd = ForwardDesc(g, dt);
  if (kind == kForward) {
    entry->conv = dnnl::convolution_forward(fwd);
    entry->wei_conv = fwd.weights_desc();
    entry->impl = fwd.impl_info_str();
    entry->scratchpad = fwd.scratchpad_desc();
  } else if (kind == kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, memory::desc(g.src(), dt, tag::nhwc),
        memory::desc(g.wei(), dt, tag::any), memory::desc(g.dst(), dt, tag::nhwc), g.strides(),
        g.pad_lo(), g.pad_hi(), fwd, UserScratchpad());
    entry->conv = dnnl::convolution_backward_data(pd);
    entry->wei_conv = pd.weights_desc();
    entry->impl = pd.impl_info_str();
    entry->scratchpad = pd.scratchpad_desc();
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, memory::desc(g.src(), dt, tag::nhwc),
        memory::desc(g.wei(), dt, tag::any), memory::desc(g.dst(), dt, tag::nhwc), g.strides(),
        g.pad_lo(), g.pad_hi(), fwd, UserScratchpad());
    entry->conv = dnnl::convolution_backward_weights(pd);
    entry->wei_conv = pd.diff_weights_desc();
    entry->impl = pd.impl_info_str();
    entry->scratchpad = pd.scratchpad_desc();
  }
  entry->reorder_needed = entry->wei_conv != entry->wei_user;
  if (entry->reorder_needed) {
    auto pd = kind == kBackwardWeights
        ? dnnl::reorder::primitive_desc(Engine(), entry->wei_conv, Engine(), entry->wei_user, UserScratchpad())
        : dnnl::reorder::primitive_desc(Engine(), entry->wei_user, Engine(), entry->wei_conv, UserScratchpad());
    entry->reorder = dnnl::reorder(pd);
    entry->reorder_scratchpad = pd.scratchpad_desc();
  }
  return g_cache.emplace(key, std::move(entry)).first->second.get();
}

ffi::Error Check4d(const char* what, ffi::AnyBuffer::Dimensions d) {
  if (d.size() != 4) return ffi::Error::InvalidArgument(std::string(what) + " must be rank 4");
  return ffi::Error::Success();
}

// Runs `kind` on NHWC `src`, HWIO `wei` and NHWC `dst`; which of them are read and which
// written depends on the kind (forward writes dst, backward-data src, backward-weights wei).
ffi::Error Run(Kind kind, ffi::AnyBuffer::Dimensions src_d, void* src, ffi::AnyBuffer::Dimensions wei_d,
               void* wei, ffi::AnyBuffer::Dimensions dst_d, void* dst, ffi::DataType type, int64_t sh,
               int64_t sw, int64_t plh, int64_t plw, int64_t phh, int64_t phw) {
  for (auto [what, d] : {std::pair{"input", src_d}, {"kernel", wei_d}, {"output", dst_d}}) {
    if (auto e = Check4d(what, d); e.failure()) return e;
  }
  memory::data_type dt = ToDnnl(type);
  if (dt == memory::data_type::undef) return ffi::Error::InvalidArgument("dtype must be float32 or bfloat16");
  Geometry g{src_d[0], src_d[1], src_d[2], src_d[3], dst_d[1], dst_d[2], dst_d[3],
             wei_d[0], wei_d[1], sh, sw, plh, plw, phh, phw};
  if (wei_d[2] != g.c || wei_d[3] != g.oc || dst_d[0] != g.n) {
    return ffi::Error::InvalidArgument("input, kernel and output shapes do not agree");
  }
  try {
    if (g_num_threads > 0) omp_set_num_threads(g_num_threads);
    Entry* entry = Lookup(kind, g, dt);
    using tag = memory::format_tag;
    dnnl::engine& eng = Engine();
    dnnl::stream stream(eng);
    memory src_m(memory::desc(g.src(), dt, tag::nhwc), eng, src);
    memory dst_m(memory::desc(g.dst(), dt, tag::nhwc), eng, dst);
    memory wei_user(entry->wei_user, eng, wei);
    memory wei_conv = entry->reorder_needed ? memory(entry->wei_conv, eng) : wei_user;
    // The reorder and the conv run one after the other, so they share one buffer.
    size_t bytes = std::max(entry->scratchpad.get_size(), entry->reorder_scratchpad.get_size());
    void* scratch = Scratchpad(bytes);
    if (bytes > 0 && scratch == nullptr) {
      return ffi::Error(ffi::ErrorCode::kResourceExhausted, "oneDNN: no memory for the scratchpad");
    }
    memory scratch_m(entry->scratchpad, eng, scratch);
    memory reorder_scratch_m(entry->reorder_scratchpad, eng, scratch);
    auto reorder = [&](memory& from, memory& to) {
      entry->reorder.execute(stream, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to},
                                      {DNNL_ARG_SCRATCHPAD, reorder_scratch_m}});
    };
    if (kind == kForward) {
      if (entry->reorder_needed) reorder(wei_user, wei_conv);
      entry->conv.execute(stream, {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_WEIGHTS, wei_conv}, {DNNL_ARG_DST, dst_m},
                                   {DNNL_ARG_SCRATCHPAD, scratch_m}});
    } else if (kind == kBackwardData) {
      if (entry->reorder_needed) reorder(wei_user, wei_conv);
      entry->conv.execute(stream, {{DNNL_ARG_DIFF_SRC, src_m}, {DNNL_ARG_WEIGHTS, wei_conv},
                                   {DNNL_ARG_DIFF_DST, dst_m}, {DNNL_ARG_SCRATCHPAD, scratch_m}});
    } else {
      entry->conv.execute(stream, {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_DIFF_WEIGHTS, wei_conv},
                                   {DNNL_ARG_DIFF_DST, dst_m}, {DNNL_ARG_SCRATCHPAD, scratch_m}});
      if (entry->reorder_needed) reorder(wei_conv, wei_user);
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error ForwardImpl(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y, int64_t sh,
                       int64_t sw, int64_t plh, int64_t plw, int64_t phh, int64_t phw) {
  return Run(kForward, x.dimensions(), x.untyped_data(), w.dimensions(), w.untyped_data(),
             y->dimensions(), y->untyped_data(), x.element_type(), sh, sw, plh, plw, phh, phw);
}

ffi::Error BackwardDataImpl(ffi::AnyBuffer dy, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx, int64_t sh,
                            int64_t sw, int64_t plh, int64_t plw, int64_t phh, int64_t phw) {
  return Run(kBackwardData, dx->dimensions(), dx->untyped_data(), w.dimensions(), w.untyped_data(),
             dy.dimensions(), dy.untyped_data(), dy.element_type(), sh, sw, plh, plw, phh, phw);
}

ffi::Error BackwardWeightsImpl(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dw,
                               int64_t sh, int64_t sw, int64_t plh, int64_t plw, int64_t phh, int64_t phw) {
  return Run(kBackwardWeights, x.dimensions(), x.untyped_data(), dw->dimensions(), dw->untyped_data(),
             dy.dimensions(), dy.untyped_data(), x.element_type(), sh, sw, plh, plw, phh, phw);
}

#define AE_CONV_ATTRS                                                                              \
  .Attr<int64_t>("sh").Attr<int64_t>("sw").Attr<int64_t>("plh").Attr<int64_t>("plw")            \
      .Attr<int64_t>("phh").Attr<int64_t>("phw")

XLA_FFI_DEFINE_HANDLER_SYMBOL(Forward, ForwardImpl,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() AE_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(BackwardData, BackwardDataImpl,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() AE_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(BackwardWeights, BackwardWeightsImpl,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() AE_CONV_ATTRS);

template <typename T>
nb::capsule Capsule(T* fn) {
  return nb::capsule(reinterpret_cast<void*>(fn));
}

}  // namespace

NB_MODULE(_onednn_conv, m) {
  m.doc() = "oneDNN convolutions as XLA FFI handlers (see ae_jax/models/onednn.py).";
  m.def("handlers", []() {
    nb::dict d;
    d["forward"] = Capsule(Forward);
    d["backward_data"] = Capsule(BackwardData);
    d["backward_weights"] = Capsule(BackwardWeights);
    return d;
  });
  m.def("set_num_threads", [](int n) { g_num_threads = n; },
        "Threads of each call's OpenMP team (0: OpenMP's default).");
  m.def("num_threads", []() { return g_num_threads; });
  m.def("cached_primitives", []() {
    std::lock_guard<std::mutex> lock(g_mutex);
    return g_cache.size();
  });
  m.def("version", []() {
    const dnnl_version_t* v = dnnl_version();
    return std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch);
  });
  m.def("implementation", [](int kind, int64_t n, int64_t h, int64_t w, int64_t c, int64_t oh, int64_t ow,
                             int64_t oc, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t plh, int64_t plw,
                             int64_t phh, int64_t phw, bool bf16) {
    Geometry g{n, h, w, c, oh, ow, oc, kh, kw, sh, sw, plh, plw, phh, phw};
    Entry* e = Lookup(static_cast<Kind>(kind), g, bf16 ? memory::data_type::bf16 : memory::data_type::f32);
    return e->impl;
  }, "The oneDNN implementation chosen for one conv (e.g. 'brg_conv_fwd:avx512_core').");
}
