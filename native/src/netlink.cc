#include "netlink.h"

#include <arpa/inet.h>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <sys/socket.h>
#include <unistd.h>

namespace membrane {

// ---- Message -------------------------------------------------------------------------------

Message::Message(uint16_t type, uint16_t flags) {
  std::memset(buf_, 0, sizeof(nlmsghdr));
  nlh_ = mnl_nlmsg_put_header(buf_);
  nlh_->nlmsg_type = type;
  nlh_->nlmsg_flags = NLM_F_REQUEST | flags;
}

void* Message::Extra(size_t size) {
  // mnl_nlmsg_put_extra_header does no bounds checking of its own.
  if (overflow_ || nlh_->nlmsg_len + MNL_ALIGN(size) > kSize) {
    overflow_ = true;
    std::memset(scratch_, 0, sizeof scratch_);
    return scratch_;  // somewhere harmless for the caller to fill in; the request is never sent
  }
  return mnl_nlmsg_put_extra_header(nlh_, size);
}

void Message::Put(uint16_t type, size_t len, const void* data) {
  if (overflow_ || len > UINT16_MAX || !mnl_attr_put_check(nlh_, kSize, type, len, data)) overflow_ = true;
}

nlattr* Message::NestStart(uint16_t type) {
  if (overflow_) return nullptr;
  nlattr* nest = mnl_attr_nest_start_check(nlh_, kSize, type);
  if (!nest) overflow_ = true;
  return nest;
}

void Message::NestEnd(nlattr* nest) {
  if (nest && !overflow_) mnl_attr_nest_end(nlh_, nest);
}

// ---- Netlink -------------------------------------------------------------------------------

int Netlink::Open() {
  if (sock_) return 0;
  mnl_socket* s = mnl_socket_open2(NETLINK_ROUTE, SOCK_CLOEXEC);
  if (!s) return errno;
  int one = 1;
  // Extended ACKs carry the kernel's own explanation ("Invalid prefix for given prefix length"),
  // which ends up in the error message. Failure only means an old kernel: not fatal.
  mnl_socket_setsockopt(s, NETLINK_EXT_ACK, &one, sizeof one);
  // Errors need not echo our whole request back.
  mnl_socket_setsockopt(s, NETLINK_CAP_ACK, &one, sizeof one);
  if (mnl_socket_bind(s, 0, MNL_SOCKET_AUTOPID) < 0) {
    int err = errno;
    mnl_socket_close(s);
    return err;
  }
  sock_ = s;
  portid_ = mnl_socket_get_portid(s);
  // Dump skbs can reach 32 KiB (and more for links with many VFs); a shorter read truncates.
  if (rx_.empty()) rx_.resize(64 * 1024);
  return 0;
}

void Netlink::Close() {
  if (sock_) mnl_socket_close(sock_);
  sock_ = nullptr;
  portid_ = 0;
}

namespace {

int ExtAckCallback(const nlattr* attr, void* data) {
  if (mnl_attr_get_type(attr) == NLMSGERR_ATTR_MSG) *static_cast<std::string*>(data) = AttrStr(attr);
  return MNL_CB_OK;
}

// NLMSG_ERROR and NLMSG_DONE both carry an int error, optionally followed by extended-ACK TLVs.
void ReadStatus(const nlmsghdr* h, Outcome* out) {
  const size_t payload = h->nlmsg_len - MNL_NLMSG_HDRLEN;
  if (payload < sizeof(int)) {
    // An NLMSG_DONE from a kernel that predates the error field.
    if (h->nlmsg_type == NLMSG_ERROR) out->error = EBADMSG;
    return;
  }
  int error;
  std::memcpy(&error, mnl_nlmsg_get_payload(h), sizeof error);
  out->error = error < 0 ? -error : error;
  if (!(h->nlmsg_flags & NLM_F_ACK_TLVS)) return;
  size_t offset = sizeof(int);
  if (h->nlmsg_type == NLMSG_ERROR) {
    if (payload < sizeof(nlmsgerr)) return;
    const auto* err = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(h));
    offset = (h->nlmsg_flags & NLM_F_CAPPED) ? sizeof(nlmsgerr) : sizeof(int) + err->msg.nlmsg_len;
  }
  if (MNL_ALIGN(offset) >= payload) return;
  mnl_attr_parse(h, offset, ExtAckCallback, &out->ext_msg);
}

}  // namespace

Outcome Netlink::Exchange(Message& msg, const MessageFn& fn, bool* interrupted) {
  Outcome out;
  *interrupted = false;
  if (msg.overflow()) {
    out.error = EMSGSIZE;
    return out;
  }
  if ((out.error = Open()) != 0) return out;

  nlmsghdr* req = msg.nlh();
  req->nlmsg_seq = ++seq_;
  req->nlmsg_pid = 0;
  if (mnl_socket_sendto(sock_, req, req->nlmsg_len) < 0) {
    out.error = errno;
    Close();
    return out;
  }

  for (;;) {
    sockaddr_nl from{};
    iovec iov{rx_.data(), rx_.size()};
    msghdr mh{};
    mh.msg_name = &from;
    mh.msg_namelen = sizeof from;
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    ssize_t n = recvmsg(mnl_socket_get_fd(sock_), &mh, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 || (mh.msg_flags & MSG_TRUNC)) {
      // The rest of this exchange is lost or unreadable; a fresh socket keeps its leftovers from
      // being mistaken for the next request's replies.
      out.error = n < 0 ? errno : EMSGSIZE;
      Close();
      return out;
    }
    if (from.nl_pid != 0) continue;  // only the kernel speaks for itself

    int len = static_cast<int>(n);
    for (auto* h = reinterpret_cast<const nlmsghdr*>(rx_.data()); mnl_nlmsg_ok(h, len); h = mnl_nlmsg_next(h, &len)) {
      // Anything else is left over from an earlier exchange that stopped early.
      if (h->nlmsg_seq != req->nlmsg_seq || h->nlmsg_pid != portid_) continue;
      if (h->nlmsg_flags & NLM_F_DUMP_INTR) *interrupted = true;
      if (h->nlmsg_type == NLMSG_ERROR || h->nlmsg_type == NLMSG_DONE) {
        ReadStatus(h, &out);
        return out;
      }
      if (h->nlmsg_type < NLMSG_MIN_TYPE) continue;  // NLMSG_NOOP, NLMSG_OVERRUN
      if (fn) fn(h);
    }
  }
}

Outcome Netlink::Request(Message& msg, const MessageFn& fn) {
  msg.nlh()->nlmsg_flags |= NLM_F_ACK;
  bool interrupted;
  return Exchange(msg, fn, &interrupted);
}

Outcome Netlink::Dump(Message& msg, const std::function<void()>& reset, const MessageFn& fn) {
  msg.nlh()->nlmsg_flags |= NLM_F_DUMP;
  Outcome out;
  for (int attempt = 0; attempt < 8; ++attempt) {
    if (attempt > 0 && reset) reset();
    bool interrupted;
    out = Exchange(msg, fn, &interrupted);
    if (out.error || !interrupted) return out;
  }
  // Still inconsistent after several tries: report it rather than return a torn table.
  out.error = EINTR;
  return out;
}

// ---- Attributes ----------------------------------------------------------------------------

namespace {

struct AttrTable {
  const nlattr** tb;
  uint16_t max;
};

int CollectAttr(const nlattr* attr, void* data) {
  auto* t = static_cast<AttrTable*>(data);
  uint16_t type = mnl_attr_get_type(attr);
  if (type <= t->max) t->tb[type] = attr;
  return MNL_CB_OK;
}

}  // namespace

void ParseAttrs(const nlmsghdr* nlh, size_t offset, const nlattr** tb, uint16_t max) {
  for (uint16_t i = 0; i <= max; ++i) tb[i] = nullptr;
  if (nlh->nlmsg_len < MNL_NLMSG_HDRLEN + MNL_ALIGN(offset)) return;
  AttrTable t{tb, max};
  mnl_attr_parse(nlh, offset, CollectAttr, &t);
}

void ParseNested(const nlattr* nest, const nlattr** tb, uint16_t max) {
  for (uint16_t i = 0; i <= max; ++i) tb[i] = nullptr;
  if (!nest) return;
  AttrTable t{tb, max};
  mnl_attr_parse_nested(nest, CollectAttr, &t);
}

uint8_t AttrU8(const nlattr* attr, uint8_t absent) {
  if (!attr || mnl_attr_get_payload_len(attr) < sizeof(uint8_t)) return absent;
  return mnl_attr_get_u8(attr);
}

uint32_t AttrU32(const nlattr* attr, uint32_t absent) {
  if (!attr || mnl_attr_get_payload_len(attr) < sizeof(uint32_t)) return absent;
  return mnl_attr_get_u32(attr);
}

std::string AttrStr(const nlattr* attr) {
  if (!attr) return std::string();
  const char* s = static_cast<const char*>(mnl_attr_get_payload(attr));
  return std::string(s, strnlen(s, mnl_attr_get_payload_len(attr)));
}

// ---- Errors --------------------------------------------------------------------------------

namespace {

const char* ErrnoName(int err) {
  switch (err) {
#define E(name) \
  case name:    \
    return #name;
    E(EPERM) E(ENOENT) E(ESRCH) E(EINTR) E(EIO) E(ENXIO) E(E2BIG) E(ENOEXEC) E(EBADF) E(ECHILD)
    E(EAGAIN) E(ENOMEM) E(EACCES) E(EFAULT) E(ENOTBLK) E(EBUSY) E(EEXIST) E(EXDEV) E(ENODEV)
    E(ENOTDIR) E(EISDIR) E(EINVAL) E(ENFILE) E(EMFILE) E(ENOTTY) E(ETXTBSY) E(EFBIG) E(ENOSPC)
    E(ESPIPE) E(EROFS) E(EMLINK) E(EPIPE) E(EDOM) E(ERANGE) E(EDEADLK) E(ENAMETOOLONG) E(ENOLCK)
    E(ENOSYS) E(ENOTEMPTY) E(ELOOP) E(ENOMSG) E(EIDRM) E(ECHRNG) E(EL2NSYNC) E(EL3HLT) E(EL3RST)
    E(ELNRNG) E(EUNATCH) E(ENOCSI) E(EL2HLT) E(EBADE) E(EBADR) E(EXFULL) E(ENOANO) E(EBADRQC)
    E(EBADSLT) E(EBFONT) E(ENOSTR) E(ENODATA) E(ETIME) E(ENOSR) E(ENONET) E(ENOPKG) E(EREMOTE)
    E(ENOLINK) E(EADV) E(ESRMNT) E(ECOMM) E(EPROTO) E(EMULTIHOP) E(EDOTDOT) E(EBADMSG)
    E(EOVERFLOW) E(ENOTUNIQ) E(EBADFD) E(EREMCHG) E(ELIBACC) E(ELIBBAD) E(ELIBSCN) E(ELIBMAX)
    E(ELIBEXEC) E(EILSEQ) E(ERESTART) E(ESTRPIPE) E(EUSERS) E(ENOTSOCK) E(EDESTADDRREQ)
    E(EMSGSIZE) E(EPROTOTYPE) E(ENOPROTOOPT) E(EPROTONOSUPPORT) E(ESOCKTNOSUPPORT) E(EOPNOTSUPP)
    E(EPFNOSUPPORT) E(EAFNOSUPPORT) E(EADDRINUSE) E(EADDRNOTAVAIL) E(ENETDOWN) E(ENETUNREACH)
    E(ENETRESET) E(ECONNABORTED) E(ECONNRESET) E(ENOBUFS) E(EISCONN) E(ENOTCONN) E(ESHUTDOWN)
    E(ETOOMANYREFS) E(ETIMEDOUT) E(ECONNREFUSED) E(EHOSTDOWN) E(EHOSTUNREACH) E(EALREADY)
    E(EINPROGRESS) E(ESTALE) E(EUCLEAN) E(ENOTNAM) E(ENAVAIL) E(EISNAM) E(EREMOTEIO) E(EDQUOT)
    E(ENOMEDIUM) E(EMEDIUMTYPE) E(ECANCELED) E(ENOKEY) E(EKEYEXPIRED) E(EKEYREVOKED)
    E(EKEYREJECTED) E(EOWNERDEAD) E(ENOTRECOVERABLE) E(ERFKILL) E(EHWPOISON)
#undef E
    default:
      return nullptr;
  }
}

}  // namespace

Napi::Error ErrnoError(Napi::Env env, const Outcome& outcome, const std::string& op) {
  const int err = outcome.error;
  std::string message = op + ": " + std::strerror(err);
  if (!outcome.ext_msg.empty()) message += "; kernel: " + outcome.ext_msg;
  const char* name = ErrnoName(err);
  Napi::Error error = Napi::Error::New(env, message);
  Napi::Object obj = error.Value();
  obj.Set("errno", Napi::Number::New(env, err));
  obj.Set("code", Napi::String::New(env, name ? std::string(name) : "ERRNO_" + std::to_string(err)));
  obj.Set("op", Napi::String::New(env, op));
  return error;
}

Napi::Value ThrowErrno(Napi::Env env, const Outcome& outcome, const std::string& op) {
  ErrnoError(env, outcome, op).ThrowAsJavaScriptException();
  return env.Undefined();
}

Napi::Value ThrowType(Napi::Env env, const std::string& message) {
  Napi::TypeError::New(env, message).ThrowAsJavaScriptException();
  return env.Undefined();
}

// ---- Arguments -----------------------------------------------------------------------------

bool ArgObject(Napi::Env env, const Napi::Value& v, const char* what, Napi::Object* out) {
  if (!v.IsObject() || v.IsArray()) {
    ThrowType(env, std::string(what) + " must be an object");
    return false;
  }
  *out = v.As<Napi::Object>();
  return true;
}

bool ArgString(Napi::Env env, const Napi::Value& v, const char* what, std::string* out) {
  if (!v.IsString()) {
    ThrowType(env, std::string(what) + " must be a string");
    return false;
  }
  *out = v.As<Napi::String>().Utf8Value();
  // The kernel reads names as C strings; an embedded NUL would silently truncate them.
  if (out->find('\0') != std::string::npos) {
    ThrowType(env, std::string(what) + " must not contain NUL characters");
    return false;
  }
  return true;
}

bool ArgU32(Napi::Env env, const Napi::Value& v, const char* what, uint32_t* out, uint32_t max) {
  double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
  if (!v.IsNumber() || !std::isfinite(d) || d < 0 || d > max || std::floor(d) != d) {
    ThrowType(env, std::string(what) + " must be an integer from 0 to " + std::to_string(max));
    return false;
  }
  *out = static_cast<uint32_t>(d);
  return true;
}

bool ArgBool(Napi::Env env, const Napi::Value& v, const char* what, bool* out) {
  if (!v.IsBoolean()) {
    ThrowType(env, std::string(what) + " must be a boolean");
    return false;
  }
  *out = v.As<Napi::Boolean>().Value();
  return true;
}

bool ArgFamily(Napi::Env env, const Napi::Value& v, const char* what, int* af) {
  double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : 0;
  if (d != 4 && d != 6) {
    ThrowType(env, std::string(what) + " must be 4 or 6");
    return false;
  }
  *af = d == 4 ? AF_INET : AF_INET6;
  return true;
}

namespace {

// Returns false when the property read itself failed (exception pending).
bool GetProp(const Napi::Object& o, const char* key, Napi::Value* out) {
  Napi::Value v = o.Get(key);
  if (v.IsEmpty()) return false;
  *out = v;
  return true;
}

}  // namespace

bool OptString(Napi::Env env, const Napi::Object& o, const char* key, const std::string& what, bool* present,
               std::string* out) {
  Napi::Value v;
  if (!GetProp(o, key, &v)) return false;
  *present = !(v.IsUndefined() || v.IsNull());
  return !*present || ArgString(env, v, what.c_str(), out);
}

bool OptU32(Napi::Env env, const Napi::Object& o, const char* key, const std::string& what, bool* present,
            uint32_t* out, uint32_t max) {
  Napi::Value v;
  if (!GetProp(o, key, &v)) return false;
  *present = !(v.IsUndefined() || v.IsNull());
  return !*present || ArgU32(env, v, what.c_str(), out, max);
}

bool OptBool(Napi::Env env, const Napi::Object& o, const char* key, const std::string& what, bool* present,
             bool* out) {
  Napi::Value v;
  if (!GetProp(o, key, &v)) return false;
  *present = !(v.IsUndefined() || v.IsNull());
  return !*present || ArgBool(env, v, what.c_str(), out);
}

size_t AddrLen(int af) { return af == AF_INET ? 4 : 16; }

bool ParseAddr(Napi::Env env, int af, const std::string& text, const std::string& what, InetAddr* out) {
  out->af = af;
  out->len = AddrLen(af);
  if (inet_pton(af, text.c_str(), out->bytes) != 1) {
    ThrowType(env, what + " is not a valid " + (af == AF_INET ? "IPv4" : "IPv6") + " address: '" + text + "'");
    return false;
  }
  return true;
}

std::string FormatAddr(int af, const nlattr* attr) {
  if (!attr || (af != AF_INET && af != AF_INET6) || mnl_attr_get_payload_len(attr) != AddrLen(af)) return "";
  char buf[INET6_ADDRSTRLEN];
  if (!inet_ntop(af, mnl_attr_get_payload(attr), buf, sizeof buf)) return "";
  return buf;
}

Napi::Value DumpArray(Napi::Env env, Netlink& nl, Message& msg, const std::string& op, const ConvertFn& convert) {
  Napi::Array out = Napi::Array::New(env);
  uint32_t n = 0;
  Outcome r = nl.Dump(
      msg,
      [&]() {
        out = Napi::Array::New(env);
        n = 0;
      },
      [&](const nlmsghdr* h) {
        Napi::Value value = convert(h);
        if (!value.IsEmpty()) out.Set(n++, value);
      });
  if (r.error) return ThrowErrno(env, r, op);
  return out;
}

}  // namespace membrane
