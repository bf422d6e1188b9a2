/* sparsec_tvm_runner: runs a TVM-exported Relax library (`main`) on tensors read from stdin.
 *
 *   sparsec_tvm_runner model.so            # built for the target, e.g. under qemu-aarch64
 *
 * Serves requests until stdin closes, so one process (one library load, which is slow under
 * emulation) answers many calls. All integers little-endian, as on both ends of the pipe:
 *   request  := u32 repeat, u32 n_inputs, tensor * n_inputs
 *   response := u32 n_outputs, tensor * n_outputs, f64 median_ms, f64 min_ms
 *   tensor   := i32 dtype_code (DLPack), i32 bits, i32 ndim, i64 shape[ndim], raw bytes
 * `main` runs `repeat` times (>= 1) on the same inputs; the times are wall-clock per call.
 * Errors: one line on stderr, exit status 1.
 */
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

struct CpuAlloc {
  void AllocData(DLTensor* t) { t->data = std::malloc(std::max<size_t>(ffi::GetDataSize(*t), 1)); }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

[[noreturn]] void Fail(const char* msg) {
  std::fprintf(stderr, "sparsec_tvm_runner: %s\n", msg);
  std::exit(1);
}

// false on a clean end of input before the first byte.
bool ReadExact(void* dst, size_t n, bool eof_ok = false) {
  size_t got = std::fread(dst, 1, n, stdin);
  if (got == n) return true;
  if (got == 0 && eof_ok && std::feof(stdin)) return false;
  Fail("truncated request on stdin");
}

void WriteExact(const void* src, size_t n) {
  if (std::fwrite(src, 1, n, stdout) != n) Fail("cannot write the response");
}

ffi::Tensor ReadTensor() {
  int32_t head[3];
  ReadExact(head, sizeof(head));
  if (head[2] < 0 || head[2] > 16) Fail("bad tensor rank in request");
  std::vector<int64_t> shape(head[2]);
  ReadExact(shape.data(), shape.size() * sizeof(int64_t));
  DLDataType dtype{static_cast<uint8_t>(head[0]), static_cast<uint8_t>(head[1]), 1};
  ffi::Tensor t = ffi::Tensor::FromNDAlloc(CpuAlloc(), ffi::Shape(shape), dtype, DLDevice{kDLCPU, 0});
  ReadExact(t.data_ptr(), ffi::GetDataSize(*t.GetDLTensorPtr()));
  return t;
}

void WriteTensor(const ffi::Tensor& t) {
  const DLTensor* d = t.GetDLTensorPtr();
  if (d->device.device_type != kDLCPU) Fail("output is not on the CPU");
  if (!ffi::IsContiguous(*d)) Fail("output is not contiguous");
  int32_t head[3] = {d->dtype.code, d->dtype.bits, d->ndim};
  WriteExact(head, sizeof(head));
  WriteExact(d->shape, sizeof(int64_t) * d->ndim);
  WriteExact(static_cast<const char*>(d->data) + d->byte_offset, ffi::GetDataSize(*d));
}

// The VM returns one tensor or a (possibly nested) tuple of them.
void Flatten(const ffi::Any& out, std::vector<ffi::Tensor>* tensors) {
  if (auto t = out.as<ffi::Tensor>()) {
    tensors->push_back(*t);
  } else if (auto arr = out.as<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& item : *arr) Flatten(item, tensors);
  } else {
    Fail("main returned something other than tensors");
  }
}

double Ms(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

int Serve(const char* path) {
  ffi::Module lib = ffi::Module::LoadFromFile(path);
  ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
  // (device type, id, allocator) for the CPU; 2 = pooled allocator, as relax.VirtualMachine.
  vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);
  ffi::Function main_fn = vm->GetFunction("main").value();
  uint32_t req[2];
  while (ReadExact(req, sizeof(req), /*eof_ok=*/true)) {
    std::vector<ffi::Any> args;
    for (uint32_t i = 0; i < req[1]; ++i) args.emplace_back(ReadTensor());
    std::vector<ffi::AnyView> views(args.begin(), args.end());
    std::vector<double> times;
    ffi::Any out;
    for (uint32_t r = 0; r < std::max<uint32_t>(req[0], 1); ++r) {
      auto start = std::chrono::steady_clock::now();
      main_fn.CallPacked(views.data(), static_cast<int32_t>(views.size()), &out);
      times.push_back(Ms(std::chrono::steady_clock::now() - start));
    }
    std::vector<ffi::Tensor> outs;
    Flatten(out, &outs);
    uint32_t n = static_cast<uint32_t>(outs.size());
    WriteExact(&n, sizeof(n));
    for (const ffi::Tensor& t : outs) WriteTensor(t);
    std::sort(times.begin(), times.end());
    double stats[2] = {times[times.size() / 2], times.front()};
    WriteExact(stats, sizeof(stats));
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) Fail("usage: sparsec_tvm_runner MODEL.so < requests");
  try {
    return Serve(argv[1]);
  } catch (const std::exception& e) {
    std::string line = e.what();
    std::replace(line.begin(), line.end(), '\n', ' ');
    Fail(line.c_str());
  }
}
