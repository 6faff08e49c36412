// ddpm-jax: 2-D convolutions through oneDNN on CPU, as XLA FFI handlers
// (ddpm_jax/kernels/onednn.py builds this file and registers the handlers).
//
// Activations NHWC, kernels HWIO, float32, any stride, explicit (low, high) padding. Three
// handlers: the forward pass y = conv(x, w), the input gradient dx and the kernel gradient dw.
// Each convolution shape gets its oneDNN primitives once (cached). The activations are used in
// place; the kernel is reordered into (or, for dw, out of) the primitives' blocked layout on
// every call, which costs well under a millisecond for the U-Net's largest kernels.

#include <oneapi/dnnl/dnnl.hpp>

#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

struct Conv {
  memory::desc src, dst, wei_user;
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_backward_data::primitive_desc bwd_data_pd;
  dnnl::convolution_backward_weights::primitive_desc bwd_weights_pd;
  dnnl::convolution_forward fwd;
  dnnl::convolution_backward_data bwd_data;
  dnnl::convolution_backward_weights bwd_weights;
};

// x: (N, H, W, C), w: (KH, KW, C, O), y: (N, OH, OW, O).
Conv* GetConv(const int64_t* x, const int64_t* w, const int64_t* y, int64_t sh, int64_t sw,
              int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  static std::mutex mu;
  static std::map<std::vector<int64_t>, std::unique_ptr<Conv>> cache;
  const std::vector<int64_t> key = {x[0], x[1], x[2], x[3], w[0], w[1], w[3], y[1], y[2],
                                    sh,   sw,   pt,   pb,   pl,   pr};
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second.get();

  auto c = std::make_unique<Conv>();
  const memory::dims src{x[0], x[3], x[1], x[2]}, wei{w[3], w[2], w[0], w[1]},
      dst{y[0], w[3], y[1], y[2]}, strides{sh, sw}, pad_l{pt, pl}, pad_r{pb, pr};
  c->src = memory::desc(src, dt::f32, tag::nhwc);
  c->dst = memory::desc(dst, dt::f32, tag::nhwc);
  c->wei_user = memory::desc(wei, dt::f32, tag::hwio);
  const memory::desc wei_any(wei, dt::f32, tag::any);  // The primitive picks its layout.
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // Per-thread buffers, see Scratch.
  const auto algo = dnnl::algorithm::convolution_direct;
  c->fwd_pd = dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, algo, c->src, wei_any, c->dst, strides,
      pad_l, pad_r, attr);
  c->bwd_data_pd = dnnl::convolution_backward_data::primitive_desc(
      Engine(), algo, c->src, wei_any, c->dst, strides, pad_l, pad_r, c->fwd_pd, attr);
  c->bwd_weights_pd = dnnl::convolution_backward_weights::primitive_desc(
      Engine(), algo, c->src, wei_any, c->dst, strides, pad_l, pad_r, c->fwd_pd, attr);
  c->fwd = dnnl::convolution_forward(c->fwd_pd);
  c->bwd_data = dnnl::convolution_backward_data(c->bwd_data_pd);
  c->bwd_weights = dnnl::convolution_backward_weights(c->bwd_weights_pd);
  Conv* out = c.get();
  cache.emplace(key, std::move(c));
  return out;
}

// A 64-byte aligned buffer of at least `bytes` bytes, one per calling thread and `slot`
// (XLA may run two convolutions at once on different threads).
void* Scratch(size_t bytes, int slot) {
  struct Buffer {
    void* data = nullptr;
    size_t size = 0;
    ~Buffer() { std::free(data); }
  };
  thread_local Buffer buffers[2];
  Buffer& b = buffers[slot];
  if (b.size < bytes) {
    std::free(b.data);
    b.size = (bytes + 63) / 64 * 64;
    b.data = std::aligned_alloc(64, b.size);
    if (b.data == nullptr) throw std::bad_alloc();
  }
  return b.data;
}

memory ScratchMemory(const memory::desc& desc, int slot) {
  return memory(desc, Engine(), Scratch(desc.get_size(), slot));
}

// The kernel in the layout `want`, reordered from the HWIO buffer `data` if needed.
memory KernelAs(dnnl::stream& s, const memory::desc& user, const memory::desc& want,
                void* data) {
  memory u(user, Engine(), data);
  if (want == user) return u;
  memory m = ScratchMemory(want, 1);
  dnnl::reorder(u, m).execute(s, u, m);
  return m;
}

enum Kind { kForward, kInputGrad, kKernelGrad };

// kForward: a = x, b = w, out = y.  kInputGrad: a = dy, b = w, out = dx.
// kKernelGrad: a = x, b = dy, out = dw.
template <Kind kind>
ffi::Error Run(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out, int64_t sh,
               int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  if (a.element_type() != ffi::F32 || b.element_type() != ffi::F32 ||
      out->element_type() != ffi::F32) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "oneDNN convolution: float32 only");
  }
  if (a.dimensions().size() != 4 || b.dimensions().size() != 4 ||
      out->dimensions().size() != 4) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "oneDNN convolution: rank 4 only");
  }
  const int64_t* ad = a.dimensions().begin();
  const int64_t* bd = b.dimensions().begin();
  const int64_t* od = out->dimensions().begin();
  const int64_t* x = kind == kInputGrad ? od : ad;
  const int64_t* w = kind == kKernelGrad ? od : bd;
  const int64_t* y = kind == kForward ? od : (kind == kInputGrad ? ad : bd);
  try {
    Conv* c = GetConv(x, w, y, sh, sw, pt, pb, pl, pr);
    dnnl::stream s(Engine());
    if (kind == kForward) {
      memory src(c->src, Engine(), a.untyped_data());
      memory dst(c->dst, Engine(), out->untyped_data());
      memory wei = KernelAs(s, c->wei_user, c->fwd_pd.weights_desc(), b.untyped_data());
      c->fwd.execute(s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst},
                         {DNNL_ARG_SCRATCHPAD, ScratchMemory(c->fwd_pd.scratchpad_desc(), 0)}});
    } else if (kind == kInputGrad) {
      memory diff_dst(c->dst, Engine(), a.untyped_data());
      memory diff_src(c->src, Engine(), out->untyped_data());
      memory wei = KernelAs(s, c->wei_user, c->bwd_data_pd.weights_desc(), b.untyped_data());
      c->bwd_data.execute(
          s, {{DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_WEIGHTS, wei},
              {DNNL_ARG_DIFF_SRC, diff_src},
              {DNNL_ARG_SCRATCHPAD, ScratchMemory(c->bwd_data_pd.scratchpad_desc(), 0)}});
    } else {
      memory src(c->src, Engine(), a.untyped_data());
      memory diff_dst(c->dst, Engine(), b.untyped_data());
      memory user(c->wei_user, Engine(), out->untyped_data());
      const memory::desc want = c->bwd_weights_pd.diff_weights_desc();
      memory diff_wei = want == c->wei_user ? user : ScratchMemory(want, 1);
      c->bwd_weights.execute(
          s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst},
              {DNNL_ARG_DIFF_WEIGHTS, diff_wei},
              {DNNL_ARG_SCRATCHPAD, ScratchMemory(c->bwd_weights_pd.scratchpad_desc(), 0)}});
      if (!(want == c->wei_user)) dnnl::reorder(diff_wei, user).execute(s, diff_wei, user);
    }
    s.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN convolution: ") + e.what());
  } catch (const std::bad_alloc&) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted, "oneDNN convolution: out of memory");
  }
  return ffi::Error::Success();
}

#define DDPM_CONV_BINDING                                                                 \
  ffi::Ffi::Bind()                                                                        \
      .Arg<ffi::AnyBuffer>()                                                              \
      .Arg<ffi::AnyBuffer>()                                                              \
      .Ret<ffi::AnyBuffer>()                                                              \
      .Attr<int64_t>("sh")                                                                \
      .Attr<int64_t>("sw")                                                                \
      .Attr<int64_t>("pt")                                                                \
      .Attr<int64_t>("pb")                                                                \
      .Attr<int64_t>("pl")                                                                \
      .Attr<int64_t>("pr")

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(DdpmOnednnConvForward, Run<kForward>, DDPM_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(DdpmOnednnConvInputGrad, Run<kInputGrad>, DDPM_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(DdpmOnednnConvKernelGrad, Run<kKernelGrad>, DDPM_CONV_BINDING);
