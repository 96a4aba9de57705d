// Links: veth creation, deletion (one link, or a whole group in one request), lookup, and the
// settings Membrane changes (IFF_UP, alias, name, MTU, MAC, group).
#include "netlink.h"

#include <linux/if.h>
#include <linux/if_link.h>
#include <linux/veth.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdio>

namespace membrane {

namespace {

bool ParseMac(Napi::Env env, const std::string& text, const std::string& what, unsigned char mac[6]) {
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  bool ok = text.size() == 17;
  for (size_t i = 0; ok && i < 6; ++i) {
    int hi = nibble(text[3 * i]), lo = nibble(text[3 * i + 1]);
    ok = hi >= 0 && lo >= 0 && (i == 5 || text[3 * i + 2] == ':');
    mac[i] = static_cast<unsigned char>(hi << 4 | lo);
  }
  if (!ok) ThrowType(env, what + " is not a MAC address (aa:bb:cc:dd:ee:ff): '" + text + "'");
  return ok;
}

std::string FormatMac(const nlattr* attr) {
  if (!attr) return "";
  const auto* p = static_cast<const unsigned char*>(mnl_attr_get_payload(attr));
  std::string out;
  char byte[4];
  for (uint16_t i = 0; i < mnl_attr_get_payload_len(attr); ++i) {
    std::snprintf(byte, sizeof byte, i ? ":%02x" : "%02x", p[i]);
    out += byte;
  }
  return out;
}

Napi::Object LinkInfoFrom(Napi::Env env, const nlmsghdr* h) {
  const auto* ifi = static_cast<const ifinfomsg*>(mnl_nlmsg_get_payload(h));
  const nlattr* tb[IFLA_MAX + 1];
  ParseAttrs(h, sizeof(ifinfomsg), tb, IFLA_MAX);
  const nlattr* li[IFLA_INFO_MAX + 1];
  ParseNested(tb[IFLA_LINKINFO], li, IFLA_INFO_MAX);

  Napi::Object o = Napi::Object::New(env);
  o.Set("index", Napi::Number::New(env, ifi->ifi_index));
  o.Set("name", Napi::String::New(env, AttrStr(tb[IFLA_IFNAME])));
  o.Set("mtu", Napi::Number::New(env, AttrU32(tb[IFLA_MTU])));
  o.Set("mac", Napi::String::New(env, FormatMac(tb[IFLA_ADDRESS])));
  o.Set("up", Napi::Boolean::New(env, (ifi->ifi_flags & IFF_UP) != 0));
  o.Set("kind", Napi::String::New(env, AttrStr(li[IFLA_INFO_KIND])));
  o.Set("alias", Napi::String::New(env, AttrStr(tb[IFLA_IFALIAS])));
  o.Set("linkIndex", Napi::Number::New(env, AttrU32(tb[IFLA_LINK])));
  o.Set("group", Napi::Number::New(env, AttrU32(tb[IFLA_GROUP])));
  return o;
}

bool IsLinkMessage(const nlmsghdr* h) {
  return h->nlmsg_type == RTM_NEWLINK && h->nlmsg_len >= MNL_NLMSG_HDRLEN + sizeof(ifinfomsg);
}

// RTM_GETLINK for one link by name or index. ENODEV is an answer (null), not an error.
Napi::Value GetLink(Napi::Env env, Netlink& nl, const std::string* name, uint32_t index, const std::string& op) {
  Message m(RTM_GETLINK, 0);
  auto* ifi = m.Header<ifinfomsg>();
  ifi->ifi_family = AF_UNSPEC;
  ifi->ifi_index = static_cast<int>(index);
  if (name) m.PutStrz(IFLA_IFNAME, *name);
  m.PutU32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);
  Napi::Value result = env.Null();
  Outcome r = nl.Request(m, [&](const nlmsghdr* h) {
    if (IsLinkMessage(h)) result = LinkInfoFrom(env, h);
  });
  if (r.error == ENODEV) return env.Null();
  if (r.error) return ThrowErrno(env, r, op);
  return result;
}

Outcome SetAlias(Netlink& nl, uint32_t index, const std::string& alias) {
  Message m(RTM_NEWLINK, 0);
  auto* ifi = m.Header<ifinfomsg>();
  ifi->ifi_family = AF_UNSPEC;
  ifi->ifi_index = static_cast<int>(index);
  // No trailing NUL, as iproute2 sends it: an empty payload is what clears the alias.
  m.Put(IFLA_IFALIAS, alias.size(), alias.data());
  return nl.Request(m);
}

// RTM_DELLINK of every link in `group` (ENODEV: the group has none).
Outcome DeleteGroup(Netlink& nl, uint32_t group) {
  Message m(RTM_DELLINK, 0);
  m.Header<ifinfomsg>()->ifi_family = AF_UNSPEC;
  m.PutU32(IFLA_GROUP, group);
  return nl.Request(m);
}

Outcome DeleteLink(Netlink& nl, uint32_t index) {
  Message m(RTM_DELLINK, 0);
  auto* ifi = m.Header<ifinfomsg>();
  ifi->ifi_family = AF_UNSPEC;
  ifi->ifi_index = static_cast<int>(index);
  return nl.Request(m);
}

}  // namespace

Napi::Value LinkCreateVeth(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name, peer, mac, peer_mac, alias;
  Napi::Object opts;
  uint32_t mtu = 0;
  bool has_mtu = false, has_mac = false, has_peer_mac = false, has_alias = false;
  unsigned char mac_bytes[6], peer_mac_bytes[6];
  if (!ArgString(env, info[0], "linkCreateVeth: name", &name) ||
      !ArgString(env, info[1], "linkCreateVeth: peerName", &peer) ||
      !ArgObject(env, info[2], "linkCreateVeth: options", &opts) ||
      !OptU32(env, opts, "mtu", "linkCreateVeth: options.mtu", &has_mtu, &mtu) ||
      !OptString(env, opts, "mac", "linkCreateVeth: options.mac", &has_mac, &mac) ||
      !OptString(env, opts, "peerMac", "linkCreateVeth: options.peerMac", &has_peer_mac, &peer_mac) ||
      !OptString(env, opts, "alias", "linkCreateVeth: options.alias", &has_alias, &alias) ||
      (has_mac && !ParseMac(env, mac, "linkCreateVeth: options.mac", mac_bytes)) ||
      (has_peer_mac && !ParseMac(env, peer_mac, "linkCreateVeth: options.peerMac", peer_mac_bytes))) {
    return env.Undefined();
  }
  Netlink& nl = NL(info);
  const std::string op = "RTM_NEWLINK veth " + name;

  Message m(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
  m.Header<ifinfomsg>()->ifi_family = AF_UNSPEC;
  m.PutStrz(IFLA_IFNAME, name);
  if (has_mtu) m.PutU32(IFLA_MTU, mtu);
  if (has_mac) m.Put(IFLA_ADDRESS, sizeof mac_bytes, mac_bytes);
  nlattr* linkinfo = m.NestStart(IFLA_LINKINFO);
  m.PutStrz(IFLA_INFO_KIND, "veth");
  nlattr* data = m.NestStart(IFLA_INFO_DATA);
  nlattr* peer_nest = m.NestStart(VETH_INFO_PEER);
  // The peer is described like a nested RTM_NEWLINK: its own ifinfomsg, then its attributes.
  m.Header<ifinfomsg>()->ifi_family = AF_UNSPEC;
  m.PutStrz(IFLA_IFNAME, peer);
  if (has_mtu) m.PutU32(IFLA_MTU, mtu);
  if (has_peer_mac) m.Put(IFLA_ADDRESS, sizeof peer_mac_bytes, peer_mac_bytes);
  m.NestEnd(peer_nest);
  m.NestEnd(data);
  m.NestEnd(linkinfo);
  Outcome r = nl.Request(m);
  if (r.error) return ThrowErrno(env, r, op);

  Napi::Value link = GetLink(env, nl, &name, 0, "RTM_GETLINK " + name);
  if (env.IsExceptionPending()) return env.Undefined();
  if (link.IsNull()) {
    // Gone already (someone deleted it between our two requests).
    Outcome gone;
    gone.error = ENODEV;
    return ThrowErrno(env, gone, "RTM_GETLINK " + name);
  }
  uint32_t index = link.As<Napi::Object>().Get("index").As<Napi::Number>().Uint32Value();

  if (has_alias) {
    // The kernel ignores IFLA_IFALIAS in a create request, so the alias is a second request. If
    // it fails, the pair is removed again: the caller sees one call that either fully happened or
    // did not, and no unmarked link is left behind.
    r = SetAlias(nl, index, alias);
    if (r.error) {
      DeleteLink(nl, index);
      return ThrowErrno(env, r, "RTM_NEWLINK alias " + name);
    }
  }
  return Napi::Number::New(env, index);
}

Napi::Value LinkDelete(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t index;
  if (!ArgU32(env, info[0], "linkDelete: index", &index, INT32_MAX)) return env.Undefined();
  Outcome r = DeleteLink(NL(info), index);
  if (r.error) return ThrowErrno(env, r, "RTM_DELLINK " + std::to_string(index));
  return env.Undefined();
}

Napi::Value LinkGetByName(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name;
  if (!ArgString(env, info[0], "linkGetByName: name", &name)) return env.Undefined();
  return GetLink(env, NL(info), &name, 0, "RTM_GETLINK " + name);
}

Napi::Value LinkGetByIndex(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t index;
  if (!ArgU32(env, info[0], "linkGetByIndex: index", &index, INT32_MAX)) return env.Undefined();
  return GetLink(env, NL(info), nullptr, index, "RTM_GETLINK " + std::to_string(index));
}

Napi::Value LinkList(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Message m(RTM_GETLINK, 0);
  m.Header<ifinfomsg>()->ifi_family = AF_UNSPEC;
  m.PutU32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);
  return DumpArray(env, NL(info), m, "RTM_GETLINK dump", [&](const nlmsghdr* h) -> Napi::Value {
    if (!IsLinkMessage(h)) return Napi::Value();
    return LinkInfoFrom(env, h);
  });
}

Napi::Value LinkSetUp(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t index;
  bool up;
  if (!ArgU32(env, info[0], "linkSetUp: index", &index, INT32_MAX) || !ArgBool(env, info[1], "linkSetUp: up", &up)) {
    return env.Undefined();
  }
  Message m(RTM_NEWLINK, 0);
  auto* ifi = m.Header<ifinfomsg>();
  ifi->ifi_family = AF_UNSPEC;
  ifi->ifi_index = static_cast<int>(index);
  // ifi_change limits the update to IFF_UP; every other flag stays as it is.
  ifi->ifi_change = IFF_UP;
  ifi->ifi_flags = up ? IFF_UP : 0;
  Outcome r = NL(info).Request(m);
  if (r.error) return ThrowErrno(env, r, std::string("RTM_NEWLINK ") + (up ? "up " : "down ") + std::to_string(index));
  return env.Undefined();
}

Napi::Value LinkSetAlias(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t index;
  std::string alias;
  if (!ArgU32(env, info[0], "linkSetAlias: index", &index, INT32_MAX) ||
      !ArgString(env, info[1], "linkSetAlias: alias", &alias)) {
    return env.Undefined();
  }
  Outcome r = SetAlias(NL(info), index, alias);
  if (r.error) return ThrowErrno(env, r, "RTM_NEWLINK alias " + std::to_string(index));
  return env.Undefined();
}

// RTM_NEWLINK on an existing link: any of name, MTU, MAC and group in one request. None of these
// waits for an RCU grace period, which is why a prepared endpoint is renamed and re-addressed at
// hand-out rather than created then.
Napi::Value LinkSet(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t index, mtu = 0, group = 0;
  std::string name, mac;
  Napi::Object opts;
  bool has_name = false, has_mtu = false, has_mac = false, has_group = false;
  unsigned char mac_bytes[6];
  if (!ArgU32(env, info[0], "linkSet: index", &index, INT32_MAX) ||
      !ArgObject(env, info[1], "linkSet: options", &opts) ||
      !OptString(env, opts, "name", "linkSet: options.name", &has_name, &name) ||
      !OptU32(env, opts, "mtu", "linkSet: options.mtu", &has_mtu, &mtu) ||
      !OptString(env, opts, "mac", "linkSet: options.mac", &has_mac, &mac) ||
      !OptU32(env, opts, "group", "linkSet: options.group", &has_group, &group) ||
      (has_mac && !ParseMac(env, mac, "linkSet: options.mac", mac_bytes))) {
    return env.Undefined();
  }
  if (has_name && (name.empty() || name.size() >= IFNAMSIZ)) {
    ThrowType(env, "linkSet: options.name must have 1 to 15 characters: '" + name + "'");
    return env.Undefined();
  }
  Message m(RTM_NEWLINK, 0);
  auto* ifi = m.Header<ifinfomsg>();
  ifi->ifi_family = AF_UNSPEC;
  ifi->ifi_index = static_cast<int>(index);
  if (has_name) m.PutStrz(IFLA_IFNAME, name);
  if (has_mtu) m.PutU32(IFLA_MTU, mtu);
  if (has_mac) m.Put(IFLA_ADDRESS, sizeof mac_bytes, mac_bytes);
  if (has_group) m.PutU32(IFLA_GROUP, group);
  Outcome r = NL(info).Request(m);
  if (r.error) return ThrowErrno(env, r, "RTM_NEWLINK set " + std::to_string(index));
  return env.Undefined();
}

// RTM_DELLINK of every link in a group: the kernel unregisters them together, paying its RCU
// grace periods once for the batch instead of once per veth. A group with no links is ENODEV.
Napi::Value LinkDeleteGroup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t group;
  if (!ArgU32(env, info[0], "linkDeleteGroup: group", &group, UINT32_MAX)) return env.Undefined();
  if (group == 0) {
    ThrowType(env, "linkDeleteGroup: group 0 is every link's default group; refusing to delete it");
    return env.Undefined();
  }
  Outcome r = DeleteGroup(NL(info), group);
  if (r.error == ENODEV) return Napi::Boolean::New(env, false);
  if (r.error) return ThrowErrno(env, r, "RTM_DELLINK group " + std::to_string(group));
  return Napi::Boolean::New(env, true);
}

// linkDeleteGroup on a libuv worker thread, with a netlink socket of its own: the kernel's grace
// periods for the batch (about 40 ms for veths with programs attached) then block neither the
// event loop nor the environment's socket. Resolves true, or false when the group has no links.
class DeleteGroupWorker : public Napi::AsyncWorker {
 public:
  DeleteGroupWorker(Napi::Env env, uint32_t group)
      : Napi::AsyncWorker(env), group_(group), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    Netlink nl;
    outcome_ = DeleteGroup(nl, group_);
  }
  void OnOK() override {
    Napi::Env env = Env();
    if (outcome_.error == ENODEV) {
      deferred_.Resolve(Napi::Boolean::New(env, false));
    } else if (outcome_.error) {
      deferred_.Reject(ErrnoError(env, outcome_, "RTM_DELLINK group " + std::to_string(group_)).Value());
    } else {
      deferred_.Resolve(Napi::Boolean::New(env, true));
    }
  }

 private:
  uint32_t group_;
  Outcome outcome_;
  Napi::Promise::Deferred deferred_;
};

Napi::Value LinkDeleteGroupAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t group;
  if (!ArgU32(env, info[0], "linkDeleteGroupAsync: group", &group, UINT32_MAX)) return env.Undefined();
  if (group == 0) {
    ThrowType(env, "linkDeleteGroupAsync: group 0 is every link's default group; refusing to delete it");
    return env.Undefined();
  }
  auto* worker = new DeleteGroupWorker(env, group);
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

}  // namespace membrane
