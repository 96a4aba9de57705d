// Shared plumbing for the rtnetlink calls: the socket, request buffers, attribute parsing,
// argument type checks and the errno-shaped JavaScript errors described in plugin/kernel/native.ts.
#pragma once

#include <napi.h>

#include <libmnl/libmnl.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace membrane {

// One outgoing request. Requests are small and fixed-size; a request that does not fit (only
// possible with absurdly long strings from JS) is reported as EMSGSIZE instead of overflowing.
class Message {
 public:
  Message(uint16_t type, uint16_t flags);
  Message(const Message&) = delete;
  Message& operator=(const Message&) = delete;

  nlmsghdr* nlh() { return nlh_; }
  bool overflow() const { return overflow_; }

  // Appends a zeroed fixed header (ifinfomsg, rtmsg, ...) at the tail of the message.
  template <typename T>
  T* Header() {
    return static_cast<T*>(Extra(sizeof(T)));
  }
  void* Extra(size_t size);  // size <= sizeof(scratch_)

  void Put(uint16_t type, size_t len, const void* data);
  void PutU8(uint16_t type, uint8_t value) { Put(type, sizeof value, &value); }
  void PutU32(uint16_t type, uint32_t value) { Put(type, sizeof value, &value); }
  void PutStrz(uint16_t type, const std::string& value) { Put(type, value.size() + 1, value.c_str()); }
  nlattr* NestStart(uint16_t type);
  void NestEnd(nlattr* nest);

 private:
  static constexpr size_t kSize = 8192;
  alignas(nlmsghdr) char buf_[kSize];
  nlmsghdr* nlh_;
  bool overflow_ = false;
  alignas(8) char scratch_[32];
};

struct Outcome {
  int error = 0;            // positive errno, 0 on success
  std::string ext_msg;      // NLMSGERR_ATTR_MSG, if the kernel sent one
};

using MessageFn = std::function<void(const nlmsghdr*)>;

// The NETLINK_ROUTE socket of one Node environment (main thread or worker). Opened on first use
// and reused; closed by the environment's cleanup hook.
class Netlink {
 public:
  Netlink() = default;
  ~Netlink() { Close(); }
  Netlink(const Netlink&) = delete;
  Netlink& operator=(const Netlink&) = delete;

  // Sends a non-dump request with NLM_F_ACK and waits for its acknowledgement; replies that
  // precede the ACK (e.g. the answer to an RTM_GETLINK) go to `fn`.
  Outcome Request(Message& msg, const MessageFn& fn = nullptr);
  // Runs a dump (NLM_F_DUMP) to NLMSG_DONE. A dump the kernel flags as inconsistent
  // (NLM_F_DUMP_INTR: the table changed underneath it) is restarted, calling `reset` first.
  Outcome Dump(Message& msg, const std::function<void()>& reset, const MessageFn& fn);
  void Close();

 private:
  int Open();
  Outcome Exchange(Message& msg, const MessageFn& fn, bool* interrupted);

  mnl_socket* sock_ = nullptr;
  uint32_t portid_ = 0;
  uint32_t seq_ = 0;
  std::vector<char> rx_;
};

// Attribute access. Parsing collects attributes into a table indexed by type; types newer than
// the headers we were built against are ignored, and readers check payload sizes, so a short or
// unexpected attribute reads as absent rather than past its end.
void ParseAttrs(const nlmsghdr* nlh, size_t offset, const nlattr** tb, uint16_t max);
void ParseNested(const nlattr* nest, const nlattr** tb, uint16_t max);
uint8_t AttrU8(const nlattr* attr, uint8_t absent = 0);
uint32_t AttrU32(const nlattr* attr, uint32_t absent = 0);
std::string AttrStr(const nlattr* attr);

// Errors. Each Throw* leaves a pending JavaScript exception and returns undefined so callers
// can `return Throw...(...)`.
Napi::Value ThrowErrno(Napi::Env env, const Outcome& outcome, const std::string& op);
// The Error ThrowErrno throws, for callers that attach more properties before throwing it.
Napi::Error ErrnoError(Napi::Env env, const Outcome& outcome, const std::string& op);
Napi::Value ThrowType(Napi::Env env, const std::string& message);

// Argument type checks. Each returns false after throwing a TypeError that names `what`.
bool ArgObject(Napi::Env env, const Napi::Value& v, const char* what, Napi::Object* out);
bool ArgString(Napi::Env env, const Napi::Value& v, const char* what, std::string* out);
bool ArgU32(Napi::Env env, const Napi::Value& v, const char* what, uint32_t* out, uint32_t max = UINT32_MAX);
bool ArgBool(Napi::Env env, const Napi::Value& v, const char* what, bool* out);
// Family 4 or 6 to AF_INET or AF_INET6.
bool ArgFamily(Napi::Env env, const Napi::Value& v, const char* what, int* af);

// Optional object properties: undefined or null means absent (*present = false).
bool OptString(Napi::Env env, const Napi::Object& o, const char* key, const std::string& what, bool* present,
               std::string* out);
bool OptU32(Napi::Env env, const Napi::Object& o, const char* key, const std::string& what, bool* present,
            uint32_t* out, uint32_t max = UINT32_MAX);
bool OptBool(Napi::Env env, const Napi::Object& o, const char* key, const std::string& what, bool* present,
             bool* out);

struct InetAddr {
  int af = 0;
  size_t len = 0;
  unsigned char bytes[16] = {};
};
bool ParseAddr(Napi::Env env, int af, const std::string& text, const std::string& what, InetAddr* out);
std::string FormatAddr(int af, const nlattr* attr);  // '' when absent or the wrong size
size_t AddrLen(int af);

// Runs a dump and returns a JS array of what `convert` makes of each message (an empty
// Napi::Value skips it). A restarted dump starts the array again. On failure, throws and
// returns undefined.
using ConvertFn = std::function<Napi::Value(const nlmsghdr*)>;
Napi::Value DumpArray(Napi::Env env, Netlink& nl, Message& msg, const std::string& op, const ConvertFn& convert);

// Helpers shared by the per-object files.
inline Netlink& NL(const Napi::CallbackInfo& info) { return *static_cast<Netlink*>(info.Data()); }

}  // namespace membrane
