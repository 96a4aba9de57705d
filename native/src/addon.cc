// Module entry: registers the functions of NativeAddon (plugin/kernel/native.ts).
#include "netlink.h"

namespace membrane {

Napi::Value LinkCreateVeth(const Napi::CallbackInfo& info);
Napi::Value LinkDelete(const Napi::CallbackInfo& info);
Napi::Value LinkGetByName(const Napi::CallbackInfo& info);
Napi::Value LinkGetByIndex(const Napi::CallbackInfo& info);
Napi::Value LinkList(const Napi::CallbackInfo& info);
Napi::Value LinkSetUp(const Napi::CallbackInfo& info);
Napi::Value LinkSetAlias(const Napi::CallbackInfo& info);
Napi::Value AddrAdd(const Napi::CallbackInfo& info);
Napi::Value AddrDel(const Napi::CallbackInfo& info);
Napi::Value AddrList(const Napi::CallbackInfo& info);
Napi::Value RouteAdd(const Napi::CallbackInfo& info);
Napi::Value RouteDel(const Napi::CallbackInfo& info);
Napi::Value RouteList(const Napi::CallbackInfo& info);
Napi::Value RuleAdd(const Napi::CallbackInfo& info);
Napi::Value RuleDel(const Napi::CallbackInfo& info);
Napi::Value RuleList(const Napi::CallbackInfo& info);

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  // One socket per environment rather than per process: worker threads each load the addon and
  // must not interleave requests on a shared socket.
  auto* nl = new Netlink();
  env.AddCleanupHook([nl]() { delete nl; });

  struct Entry {
    const char* name;
    Napi::Function::Callback fn;
  };
  static const Entry entries[] = {
      {"linkCreateVeth", LinkCreateVeth}, {"linkDelete", LinkDelete},     {"linkGetByName", LinkGetByName},
      {"linkGetByIndex", LinkGetByIndex}, {"linkList", LinkList},         {"linkSetUp", LinkSetUp},
      {"linkSetAlias", LinkSetAlias},     {"addrAdd", AddrAdd},           {"addrDel", AddrDel},
      {"addrList", AddrList},             {"routeAdd", RouteAdd},         {"routeDel", RouteDel},
      {"routeList", RouteList},           {"ruleAdd", RuleAdd},           {"ruleDel", RuleDel},
      {"ruleList", RuleList},
  };
  for (const Entry& e : entries) {
    Napi::Function fn = Napi::Function::New(env, e.fn, e.name, nl);
    if (env.IsExceptionPending()) return exports;
    exports.Set(e.name, fn);
  }
  return exports;
}

}  // namespace

}  // namespace membrane

// The macro pastes its argument into an identifier, so it needs an unqualified name.
static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return membrane::Init(env, exports); }

NODE_API_MODULE(membrane_native, InitModule)
