// Module entry: registers the functions of NativeAddon (plugin/kernel/native.ts).
#include "bpf_util.h"
#include "netlink.h"

namespace membrane {

Napi::Value LinkCreateVeth(const Napi::CallbackInfo& info);
Napi::Value LinkDelete(const Napi::CallbackInfo& info);
Napi::Value LinkGetByName(const Napi::CallbackInfo& info);
Napi::Value LinkGetByIndex(const Napi::CallbackInfo& info);
Napi::Value LinkList(const Napi::CallbackInfo& info);
Napi::Value LinkSetUp(const Napi::CallbackInfo& info);
Napi::Value LinkSetAlias(const Napi::CallbackInfo& info);
Napi::Value LinkSet(const Napi::CallbackInfo& info);
Napi::Value LinkDeleteGroup(const Napi::CallbackInfo& info);
Napi::Value LinkDeleteGroupAsync(const Napi::CallbackInfo& info);
Napi::Value AddrAdd(const Napi::CallbackInfo& info);
Napi::Value AddrDel(const Napi::CallbackInfo& info);
Napi::Value AddrList(const Napi::CallbackInfo& info);
Napi::Value RouteAdd(const Napi::CallbackInfo& info);
Napi::Value RouteDel(const Napi::CallbackInfo& info);
Napi::Value RouteList(const Napi::CallbackInfo& info);
Napi::Value RuleAdd(const Napi::CallbackInfo& info);
Napi::Value RuleDel(const Napi::CallbackInfo& info);
Napi::Value RuleList(const Napi::CallbackInfo& info);
Napi::Value BpfObjectLoad(const Napi::CallbackInfo& info);
Napi::Value BpfObjGet(const Napi::CallbackInfo& info);
Napi::Value BpfObjPin(const Napi::CallbackInfo& info);
Napi::Value BpfClose(const Napi::CallbackInfo& info);
Napi::Value BpfMapInfo(const Napi::CallbackInfo& info);
Napi::Value BpfMapCreate(const Napi::CallbackInfo& info);
Napi::Value BpfMapGetFdById(const Napi::CallbackInfo& info);
Napi::Value BpfMapLookup(const Napi::CallbackInfo& info);
Napi::Value BpfMapUpdate(const Napi::CallbackInfo& info);
Napi::Value BpfMapDelete(const Napi::CallbackInfo& info);
Napi::Value BpfMapNextKey(const Napi::CallbackInfo& info);
Napi::Value BpfMapLookupBatch(const Napi::CallbackInfo& info);
Napi::Value BpfMapUpdateBatch(const Napi::CallbackInfo& info);
Napi::Value BpfMapDeleteBatch(const Napi::CallbackInfo& info);
Napi::Value BpfMapUpdateAsync(const Napi::CallbackInfo& info);
Napi::Value BpfMapDeleteBatchAsync(const Napi::CallbackInfo& info);
Napi::Value BpfNumPossibleCpus(const Napi::CallbackInfo& info);
Napi::Value BpfProgTestRun(const Napi::CallbackInfo& info);
Napi::Value TcxAttach(const Napi::CallbackInfo& info);
Napi::Value BpfLinkUpdate(const Napi::CallbackInfo& info);
Napi::Value TcAttach(const Napi::CallbackInfo& info);
Napi::Value TcDetach(const Napi::CallbackInfo& info);
Napi::Value TcxQuery(const Napi::CallbackInfo& info);
Napi::Value RingbufConsume(const Napi::CallbackInfo& info);
Napi::Value CgroupLinkCreate(const Napi::CallbackInfo& info);
Napi::Value IterLinkCreate(const Napi::CallbackInfo& info);
Napi::Value IterRun(const Napi::CallbackInfo& info);

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  // One socket per environment rather than per process: worker threads each load the addon and
  // must not interleave requests on a shared socket.
  auto* nl = new Netlink();
  env.AddCleanupHook([nl]() { delete nl; });
  // Nothing here touches bpf(2): on a kernel without it the addon still loads, and the bpf
  // functions fail with their errno when called.
  InstallLibbpfPrint();

  struct Entry {
    const char* name;
    Napi::Function::Callback fn;
  };
  static const Entry entries[] = {
      {"linkCreateVeth", LinkCreateVeth}, {"linkDelete", LinkDelete},     {"linkGetByName", LinkGetByName},
      {"linkGetByIndex", LinkGetByIndex}, {"linkList", LinkList},         {"linkSetUp", LinkSetUp},
      {"linkSetAlias", LinkSetAlias},     {"linkSet", LinkSet},     {"linkDeleteGroup", LinkDeleteGroup},     {"linkDeleteGroupAsync", LinkDeleteGroupAsync},     {"addrAdd", AddrAdd},           {"addrDel", AddrDel},
      {"addrList", AddrList},             {"routeAdd", RouteAdd},         {"routeDel", RouteDel},
      {"routeList", RouteList},           {"ruleAdd", RuleAdd},           {"ruleDel", RuleDel},
      {"ruleList", RuleList},
      // bpf (bpf.cc, tc.cc, ringbuf.cc)
      {"bpfObjectLoad", BpfObjectLoad},   {"bpfObjGet", BpfObjGet},       {"bpfObjPin", BpfObjPin},
      {"bpfClose", BpfClose},             {"bpfMapInfo", BpfMapInfo},     {"bpfMapLookup", BpfMapLookup},
      {"bpfMapUpdate", BpfMapUpdate},     {"bpfMapDelete", BpfMapDelete}, {"bpfMapNextKey", BpfMapNextKey}, {"bpfMapLookupBatch", BpfMapLookupBatch},
      {"bpfMapUpdateBatch", BpfMapUpdateBatch}, {"bpfMapCreate", BpfMapCreate}, {"bpfMapGetFdById", BpfMapGetFdById}, {"bpfMapDeleteBatch", BpfMapDeleteBatch}, {"bpfMapUpdateAsync", BpfMapUpdateAsync}, {"bpfMapDeleteBatchAsync", BpfMapDeleteBatchAsync},
      {"bpfNumPossibleCpus", BpfNumPossibleCpus}, {"bpfProgTestRun", BpfProgTestRun},
      {"tcxAttach", TcxAttach},           {"bpfLinkUpdate", BpfLinkUpdate}, {"tcAttach", TcAttach},
      {"tcDetach", TcDetach},             {"tcxQuery", TcxQuery},         {"ringbufConsume", RingbufConsume},
      // sockets (sock.cc)
      {"cgroupLinkCreate", CgroupLinkCreate}, {"iterLinkCreate", IterLinkCreate}, {"iterRun", IterRun},
  };
  for (const Entry& e : entries) {
    // Every function gets the environment's netlink socket; the bpf ones ignore it.
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
