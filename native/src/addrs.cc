// Interface addresses.
#include "netlink.h"

#include <linux/if_addr.h>
#include <sys/socket.h>

namespace membrane {

namespace {

// Shared by addrAdd and addrDel: (index, family, address, prefixLen) -> ifaddrmsg + IFA_LOCAL/IFA_ADDRESS.
bool BuildAddr(const Napi::CallbackInfo& info, const char* fn, Message* m, std::string* op) {
  Napi::Env env = info.Env();
  const std::string f(fn);
  uint32_t index, prefix_len;
  int af;
  std::string text;
  InetAddr addr;
  if (!ArgU32(env, info[0], (f + ": index").c_str(), &index, INT32_MAX) ||
      !ArgFamily(env, info[1], (f + ": family").c_str(), &af) ||
      !ArgString(env, info[2], (f + ": address").c_str(), &text) ||
      !ArgU32(env, info[3], (f + ": prefixLen").c_str(), &prefix_len, UINT8_MAX) ||
      !ParseAddr(env, af, text, f + ": address", &addr)) {
    return false;
  }
  auto* ifa = m->Header<ifaddrmsg>();
  ifa->ifa_family = static_cast<uint8_t>(af);
  ifa->ifa_prefixlen = static_cast<uint8_t>(prefix_len);
  ifa->ifa_index = index;
  // Both, as iproute2 sends them for an address without a peer: for IPv4 IFA_LOCAL is the
  // address and IFA_ADDRESS the (same) peer; IPv6 looks at IFA_ADDRESS.
  m->Put(IFA_LOCAL, addr.len, addr.bytes);
  m->Put(IFA_ADDRESS, addr.len, addr.bytes);
  *op = std::string(m->nlh()->nlmsg_type == RTM_NEWADDR ? "RTM_NEWADDR " : "RTM_DELADDR ") + text + "/" +
        std::to_string(prefix_len) + " dev " + std::to_string(index);
  return true;
}

}  // namespace

Napi::Value AddrAdd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Message m(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL);
  std::string op;
  Napi::Object opts;
  bool nodad = false, nopr = false, present;
  if (!BuildAddr(info, "addrAdd", &m, &op) || !ArgObject(env, info[4], "addrAdd: options", &opts) ||
      !OptBool(env, opts, "nodad", "addrAdd: options.nodad", &present, &nodad) ||
      !OptBool(env, opts, "noprefixroute", "addrAdd: options.noprefixroute", &present, &nopr)) {
    return env.Undefined();
  }
  const uint32_t flags = (nodad ? IFA_F_NODAD : 0) | (nopr ? IFA_F_NOPREFIXROUTE : 0);
  // IFA_F_NOPREFIXROUTE does not fit the 8-bit ifa_flags; IFA_FLAGS carries all of them.
  static_cast<ifaddrmsg*>(mnl_nlmsg_get_payload(m.nlh()))->ifa_flags = static_cast<uint8_t>(flags);
  m.PutU32(IFA_FLAGS, flags);
  Outcome r = NL(info).Request(m);
  if (r.error) return ThrowErrno(env, r, op);
  return env.Undefined();
}

Napi::Value AddrDel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Message m(RTM_DELADDR, 0);
  std::string op;
  if (!BuildAddr(info, "addrDel", &m, &op)) return env.Undefined();
  Outcome r = NL(info).Request(m);
  if (r.error) return ThrowErrno(env, r, op);
  return env.Undefined();
}

Napi::Value AddrList(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int af;
  uint32_t index;
  if (!ArgFamily(env, info[0], "addrList: family", &af) ||
      !ArgU32(env, info[1], "addrList: index", &index, INT32_MAX)) {
    return env.Undefined();
  }
  Message m(RTM_GETADDR, 0);
  m.Header<ifaddrmsg>()->ifa_family = static_cast<uint8_t>(af);
  return DumpArray(env, NL(info), m, std::string("RTM_GETADDR dump ") + (af == AF_INET ? "inet" : "inet6"), [&](const nlmsghdr* h) -> Napi::Value {
    if (h->nlmsg_type != RTM_NEWADDR || h->nlmsg_len < MNL_NLMSG_HDRLEN + sizeof(ifaddrmsg)) return Napi::Value();
    const auto* ifa = static_cast<const ifaddrmsg*>(mnl_nlmsg_get_payload(h));
    if (ifa->ifa_family != af || (index != 0 && ifa->ifa_index != index)) return Napi::Value();
    const nlattr* tb[IFA_MAX + 1];
    ParseAttrs(h, sizeof(ifaddrmsg), tb, IFA_MAX);
    // IFA_LOCAL is the interface's own address when it differs from IFA_ADDRESS (the peer).
    const nlattr* a = tb[IFA_LOCAL] ? tb[IFA_LOCAL] : tb[IFA_ADDRESS];
    Napi::Object o = Napi::Object::New(env);
    o.Set("index", Napi::Number::New(env, ifa->ifa_index));
    o.Set("family", Napi::Number::New(env, af == AF_INET ? 4 : 6));
    o.Set("address", Napi::String::New(env, FormatAddr(af, a)));
    o.Set("prefixLen", Napi::Number::New(env, ifa->ifa_prefixlen));
    o.Set("flags", Napi::Number::New(env, AttrU32(tb[IFA_FLAGS], ifa->ifa_flags)));
    return o;
  });
}

}  // namespace membrane
