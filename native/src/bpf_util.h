// Shared plumbing for the bpf(2) half of the addon (bpf.cc, tc.cc, ringbuf.cc): libbpf's error
// conventions mapped onto the errno-shaped JavaScript errors of netlink.h, libbpf log capture, and
// the argument checks that only bpf calls need.
#pragma once

#include "netlink.h"

#include <string>

namespace membrane {

// libbpf (1.0 semantics) returns negative error codes and leaves the same value in errno. These
// take the positive value. Codes from libbpf's own range (LIBBPF_ERRNO__*, 4000 and up: "BPF
// object format invalid", ...) get libbpf's description and a LIBBPF_ERRNO__* code, since
// strerror knows nothing of them.
Napi::Error BpfError(Napi::Env env, int err, const std::string& op);
Napi::Value ThrowBpf(Napi::Env env, int err, const std::string& op);

// Collects what libbpf prints (warnings and info, which include the verifier log of a failed
// program load) while it is alive, on this thread. libbpf's print hook is process-wide, so the
// buffer is found through a thread-local: worker threads loading objects at the same time each
// see only their own messages. Messages outside any capture go to stderr (warnings only), as
// libbpf would print them itself.
class LogCapture {
 public:
  LogCapture();
  ~LogCapture();
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;

  const std::string& text() const { return text_; }
  void Append(const std::string& s) { text_ += s; }

 private:
  std::string text_;
  LogCapture* prev_;
};

// Installs the print hook LogCapture relies on. Idempotent; called from module init.
void InstallLibbpfPrint();

// An fd: a non-negative int.
bool ArgFd(Napi::Env env, const Napi::Value& v, const char* what, int* out);
// A Buffer (any Uint8Array). Its memory stays valid while the call runs.
bool ArgBuffer(Napi::Env env, const Napi::Value& v, const char* what, Napi::Buffer<uint8_t>* out);
// Optional Buffer property: undefined or null means absent.
bool OptBuffer(Napi::Env env, const Napi::Object& o, const char* key, const std::string& what, bool* present,
               Napi::Buffer<uint8_t>* out);

}  // namespace membrane
