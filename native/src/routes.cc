// Routes (RTM_*ROUTE) and policy routing rules (RTM_*RULE).
#include "netlink.h"

#include <linux/fib_rules.h>
#include <sys/socket.h>

namespace membrane {

namespace {

struct Name {
  const char* name;
  uint8_t value;
};

// Route types and scopes accepted from JS. Listing also names a few types only the kernel
// creates (broadcast etc. in the local table); anything else reads as 'type_<n>' / 'scope_<n>'.
const Name kRouteTypes[] = {
    {"unicast", RTN_UNICAST}, {"local", RTN_LOCAL}, {"blackhole", RTN_BLACKHOLE}, {"unreachable", RTN_UNREACHABLE},
    {"prohibit", RTN_PROHIBIT}, {"throw", RTN_THROW},
};
const Name kListedRouteTypes[] = {
    {"broadcast", RTN_BROADCAST}, {"anycast", RTN_ANYCAST}, {"multicast", RTN_MULTICAST},
};
const Name kScopes[] = {
    {"universe", RT_SCOPE_UNIVERSE}, {"link", RT_SCOPE_LINK}, {"host", RT_SCOPE_HOST},
};
const Name kListedScopes[] = {
    {"site", RT_SCOPE_SITE}, {"nowhere", RT_SCOPE_NOWHERE},
};
const Name kRuleActions[] = {
    {"lookup", FR_ACT_TO_TBL}, {"blackhole", FR_ACT_BLACKHOLE}, {"unreachable", FR_ACT_UNREACHABLE},
    {"prohibit", FR_ACT_PROHIBIT},
};

template <size_t N>
const char* NameOf(const Name (&names)[N], uint8_t value) {
  for (const Name& n : names)
    if (n.value == value) return n.name;
  return nullptr;
}

template <size_t N, size_t M>
std::string Describe(const Name (&names)[N], const Name (&more)[M], uint8_t value, const char* prefix) {
  const char* name = NameOf(names, value);
  if (!name) name = NameOf(more, value);
  return name ? name : prefix + std::to_string(value);
}

// Optional enum-valued string property. A string outside `names` is a TypeError listing them.
template <size_t N>
bool OptName(Napi::Env env, const Napi::Object& o, const char* key, const std::string& what, const Name (&names)[N],
             bool* present, uint8_t* out) {
  std::string s;
  if (!OptString(env, o, key, what, present, &s)) return false;
  if (!*present) return true;
  std::string allowed;
  for (const Name& n : names) {
    if (s == n.name) {
      *out = n.value;
      return true;
    }
    allowed += (allowed.empty() ? "'" : ", '") + std::string(n.name) + "'";
  }
  ThrowType(env, what + " must be one of " + allowed + ", not '" + s + "'");
  return false;
}

// Required address + optional prefix length (full length when absent).
bool OptPrefix(Napi::Env env, const Napi::Object& o, int af, const char* key, const char* len_key,
               const std::string& what, bool* present, InetAddr* addr, uint32_t* len, std::string* text) {
  bool has_len;
  if (!OptString(env, o, key, what + "." + key, present, text) ||
      !OptU32(env, o, len_key, what + "." + len_key, &has_len, len, UINT8_MAX)) {
    return false;
  }
  if (!*present) {
    *len = 0;
    return true;
  }
  if (!has_len) *len = static_cast<uint32_t>(AddrLen(af) * 8);
  return ParseAddr(env, af, *text, what + "." + key, addr);
}

std::string TableText(uint32_t table) { return " table " + std::to_string(table); }

// routeAdd/routeDel: the RouteSpec becomes an rtmsg plus attributes. For a delete, fields the
// caller left out stay wildcards (type RTN_UNSPEC, scope RT_SCOPE_NOWHERE, protocol 0), which is
// how the kernel is asked to match "any".
bool BuildRoute(Napi::Env env, const Napi::Value& arg, const char* fn, bool del, Message* m, std::string* op) {
  const std::string what = std::string(fn) + ": route";
  Napi::Object o;
  Napi::Value family_v;
  int af;
  std::string dst_text, gw_text, src_text;
  uint32_t dst_len, table = RT_TABLE_MAIN, oif = 0, protocol = 0, priority = 0;
  uint8_t type = del ? RTN_UNSPEC : RTN_UNICAST, scope = 0;
  bool has_table, has_type, has_oif, has_gw, has_src, has_scope, has_proto, has_prio;
  InetAddr dst, gw, src;
  if (!ArgObject(env, arg, what.c_str(), &o)) return false;
  family_v = o.Get("family");
  if (family_v.IsEmpty() || !ArgFamily(env, family_v, (what + ".family").c_str(), &af)) return false;
  Napi::Value dst_v = o.Get("dst");
  if (dst_v.IsEmpty() || !ArgString(env, dst_v, (what + ".dst").c_str(), &dst_text)) return false;
  Napi::Value len_v = o.Get("dstLen");
  if (len_v.IsEmpty() || !ArgU32(env, len_v, (what + ".dstLen").c_str(), &dst_len, UINT8_MAX)) return false;
  if (!ParseAddr(env, af, dst_text, what + ".dst", &dst) ||
      !OptU32(env, o, "table", what + ".table", &has_table, &table) ||
      !OptName(env, o, "type", what + ".type", kRouteTypes, &has_type, &type) ||
      !OptU32(env, o, "oif", what + ".oif", &has_oif, &oif) ||
      !OptString(env, o, "gateway", what + ".gateway", &has_gw, &gw_text) ||
      (has_gw && !ParseAddr(env, af, gw_text, what + ".gateway", &gw)) ||
      !OptString(env, o, "prefsrc", what + ".prefsrc", &has_src, &src_text) ||
      (has_src && !ParseAddr(env, af, src_text, what + ".prefsrc", &src)) ||
      !OptName(env, o, "scope", what + ".scope", kScopes, &has_scope, &scope) ||
      !OptU32(env, o, "protocol", what + ".protocol", &has_proto, &protocol, UINT8_MAX) ||
      !OptU32(env, o, "priority", what + ".priority", &has_prio, &priority)) {
    return false;
  }
  if (!has_table) table = RT_TABLE_MAIN;
  if (!has_scope) {
    if (del)
      scope = RT_SCOPE_NOWHERE;
    else if (type == RTN_LOCAL)
      scope = RT_SCOPE_HOST;  // as iproute2 does; a local route is about this host only
    else if (type == RTN_UNICAST && !has_gw)
      scope = RT_SCOPE_LINK;  // directly connected: no next hop to reach
    else
      scope = RT_SCOPE_UNIVERSE;
  }
  if (!has_proto && !del) protocol = RTPROT_STATIC;

  auto* rtm = m->Header<rtmsg>();
  rtm->rtm_family = static_cast<uint8_t>(af);
  rtm->rtm_dst_len = static_cast<uint8_t>(dst_len);
  // Ids above 255 do not fit rtm_table; RTA_TABLE always carries the full id.
  rtm->rtm_table = table < 256 ? static_cast<uint8_t>(table) : static_cast<uint8_t>(RT_TABLE_UNSPEC);
  rtm->rtm_protocol = static_cast<uint8_t>(protocol);
  rtm->rtm_scope = scope;
  rtm->rtm_type = type;
  m->PutU32(RTA_TABLE, table);
  if (dst_len > 0) m->Put(RTA_DST, dst.len, dst.bytes);
  if (has_oif) m->PutU32(RTA_OIF, oif);
  if (has_gw) m->Put(RTA_GATEWAY, gw.len, gw.bytes);
  if (has_src) m->Put(RTA_PREFSRC, src.len, src.bytes);
  if (has_prio) m->PutU32(RTA_PRIORITY, priority);

  *op = std::string(del ? "RTM_DELROUTE " : "RTM_NEWROUTE ") + (has_type ? Describe(kRouteTypes, kListedRouteTypes, type, "type_") + " " : "") +
        dst_text + "/" + std::to_string(dst_len) + TableText(table);
  return true;
}

// ruleAdd/ruleDel: the RuleSpec becomes a fib_rule_hdr plus FRA_* attributes.
bool BuildRule(Napi::Env env, const Napi::Value& arg, const char* fn, Message* m, std::string* op) {
  const std::string what = std::string(fn) + ": rule";
  Napi::Object o;
  int af;
  uint32_t priority, src_len, dst_len, table = 0, protocol = 0;
  uint8_t action = FR_ACT_TO_TBL;
  bool has_src, has_dst, has_table, has_action, has_proto;
  InetAddr src, dst;
  std::string src_text, dst_text;
  if (!ArgObject(env, arg, what.c_str(), &o)) return false;
  Napi::Value family_v = o.Get("family");
  if (family_v.IsEmpty() || !ArgFamily(env, family_v, (what + ".family").c_str(), &af)) return false;
  Napi::Value prio_v = o.Get("priority");
  if (prio_v.IsEmpty() || !ArgU32(env, prio_v, (what + ".priority").c_str(), &priority)) return false;
  if (!OptPrefix(env, o, af, "src", "srcLen", what, &has_src, &src, &src_len, &src_text) ||
      !OptPrefix(env, o, af, "dst", "dstLen", what, &has_dst, &dst, &dst_len, &dst_text) ||
      !OptU32(env, o, "table", what + ".table", &has_table, &table) ||
      !OptName(env, o, "action", what + ".action", kRuleActions, &has_action, &action) ||
      !OptU32(env, o, "protocol", what + ".protocol", &has_proto, &protocol, UINT8_MAX)) {
    return false;
  }

  auto* frh = m->Header<fib_rule_hdr>();
  frh->family = static_cast<uint8_t>(af);
  frh->src_len = static_cast<uint8_t>(src_len);
  frh->dst_len = static_cast<uint8_t>(dst_len);
  frh->action = action;
  frh->table = has_table && table < 256 ? static_cast<uint8_t>(table) : static_cast<uint8_t>(RT_TABLE_UNSPEC);
  m->PutU32(FRA_PRIORITY, priority);
  if (has_src) m->Put(FRA_SRC, src.len, src.bytes);
  if (has_dst) m->Put(FRA_DST, dst.len, dst.bytes);
  if (has_table) m->PutU32(FRA_TABLE, table);
  if (has_proto) m->PutU8(FRA_PROTOCOL, static_cast<uint8_t>(protocol));

  *op = std::string(m->nlh()->nlmsg_type == RTM_NEWRULE ? "RTM_NEWRULE" : "RTM_DELRULE") + " pref " +
        std::to_string(priority) + (has_src ? " from " + src_text + "/" + std::to_string(src_len) : "") +
        (has_dst ? " to " + dst_text + "/" + std::to_string(dst_len) : "") + " " + NameOf(kRuleActions, action) +
        (has_table ? " " + std::to_string(table) : "");
  return true;
}

}  // namespace

Napi::Value RouteAdd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bool replace;
  if (!ArgBool(env, info[1], "routeAdd: replace", &replace)) return env.Undefined();
  Message m(RTM_NEWROUTE, NLM_F_CREATE | (replace ? NLM_F_REPLACE : NLM_F_EXCL));
  std::string op;
  if (!BuildRoute(env, info[0], "routeAdd", false, &m, &op)) return env.Undefined();
  Outcome r = NL(info).Request(m);
  if (r.error) return ThrowErrno(env, r, op);
  return env.Undefined();
}

Napi::Value RouteDel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Message m(RTM_DELROUTE, 0);
  std::string op;
  if (!BuildRoute(env, info[0], "routeDel", true, &m, &op)) return env.Undefined();
  Outcome r = NL(info).Request(m);
  if (r.error) return ThrowErrno(env, r, op);
  return env.Undefined();
}

Napi::Value RouteList(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int af;
  uint32_t table;
  if (!ArgFamily(env, info[0], "routeList: family", &af) || !ArgU32(env, info[1], "routeList: table", &table)) {
    return env.Undefined();
  }
  Message m(RTM_GETROUTE, 0);
  m.Header<rtmsg>()->rtm_family = static_cast<uint8_t>(af);
  return DumpArray(env, NL(info), m, std::string("RTM_GETROUTE dump ") + (af == AF_INET ? "inet" : "inet6"), [&](const nlmsghdr* h) -> Napi::Value {
    if (h->nlmsg_type != RTM_NEWROUTE || h->nlmsg_len < MNL_NLMSG_HDRLEN + sizeof(rtmsg)) return Napi::Value();
    const auto* rtm = static_cast<const rtmsg*>(mnl_nlmsg_get_payload(h));
    // Cached/cloned entries (PMTU exceptions and the like) are not routes anyone added.
    if (rtm->rtm_family != af || (rtm->rtm_flags & RTM_F_CLONED)) return Napi::Value();
    const nlattr* tb[RTA_MAX + 1];
    ParseAttrs(h, sizeof(rtmsg), tb, RTA_MAX);
    const uint32_t t = AttrU32(tb[RTA_TABLE], rtm->rtm_table);
    if (table != 0 && t != table) return Napi::Value();
    std::string dst = FormatAddr(af, tb[RTA_DST]);
    if (dst.empty()) dst = af == AF_INET ? "0.0.0.0" : "::";
    Napi::Object o = Napi::Object::New(env);
    o.Set("family", Napi::Number::New(env, af == AF_INET ? 4 : 6));
    o.Set("dst", Napi::String::New(env, dst));
    o.Set("dstLen", Napi::Number::New(env, rtm->rtm_dst_len));
    o.Set("table", Napi::Number::New(env, t));
    o.Set("type", Napi::String::New(env, Describe(kRouteTypes, kListedRouteTypes, rtm->rtm_type, "type_")));
    o.Set("oif", Napi::Number::New(env, AttrU32(tb[RTA_OIF])));
    o.Set("gateway", Napi::String::New(env, FormatAddr(af, tb[RTA_GATEWAY])));
    o.Set("prefsrc", Napi::String::New(env, FormatAddr(af, tb[RTA_PREFSRC])));
    o.Set("scope", Napi::String::New(env, Describe(kScopes, kListedScopes, rtm->rtm_scope, "scope_")));
    o.Set("protocol", Napi::Number::New(env, rtm->rtm_protocol));
    o.Set("priority", Napi::Number::New(env, AttrU32(tb[RTA_PRIORITY])));
    return o;
  });
}

Napi::Value RuleAdd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  // Without NLM_F_EXCL the kernel silently accepts a duplicate of an existing rule.
  Message m(RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL);
  std::string op;
  if (!BuildRule(env, info[0], "ruleAdd", &m, &op)) return env.Undefined();
  Outcome r = NL(info).Request(m);
  if (r.error) return ThrowErrno(env, r, op);
  return env.Undefined();
}

Napi::Value RuleDel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Message m(RTM_DELRULE, 0);
  std::string op;
  if (!BuildRule(env, info[0], "ruleDel", &m, &op)) return env.Undefined();
  Outcome r = NL(info).Request(m);
  if (r.error) return ThrowErrno(env, r, op);
  return env.Undefined();
}

Napi::Value RuleList(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int af;
  if (!ArgFamily(env, info[0], "ruleList: family", &af)) return env.Undefined();
  Message m(RTM_GETRULE, 0);
  m.Header<fib_rule_hdr>()->family = static_cast<uint8_t>(af);
  return DumpArray(env, NL(info), m, std::string("RTM_GETRULE dump ") + (af == AF_INET ? "inet" : "inet6"), [&](const nlmsghdr* h) -> Napi::Value {
    if (h->nlmsg_type != RTM_NEWRULE || h->nlmsg_len < MNL_NLMSG_HDRLEN + sizeof(fib_rule_hdr)) return Napi::Value();
    const auto* frh = static_cast<const fib_rule_hdr*>(mnl_nlmsg_get_payload(h));
    if (frh->family != af) return Napi::Value();
    const nlattr* tb[FRA_MAX + 1];
    ParseAttrs(h, sizeof(fib_rule_hdr), tb, FRA_MAX);
    const char* action = NameOf(kRuleActions, frh->action);
    Napi::Object o = Napi::Object::New(env);
    o.Set("family", Napi::Number::New(env, af == AF_INET ? 4 : 6));
    o.Set("priority", Napi::Number::New(env, AttrU32(tb[FRA_PRIORITY])));
    o.Set("src", Napi::String::New(env, FormatAddr(af, tb[FRA_SRC])));
    o.Set("srcLen", Napi::Number::New(env, frh->src_len));
    o.Set("dst", Napi::String::New(env, FormatAddr(af, tb[FRA_DST])));
    o.Set("dstLen", Napi::Number::New(env, frh->dst_len));
    o.Set("table", Napi::Number::New(env, AttrU32(tb[FRA_TABLE], frh->table)));
    o.Set("action", Napi::String::New(env, action ? action : "action_" + std::to_string(frh->action)));
    o.Set("protocol", Napi::Number::New(env, AttrU8(tb[FRA_PROTOCOL])));
    return o;
  });
}

}  // namespace membrane
