// Attaching tc programs: tcx links (kernel >= 6.6) and, for older kernels, the clsact qdisc with
// a direct-action cls_bpf filter.
//
// libbpf 1.1 (Debian 12) and its uapi header predate tcx, so the tcx calls are raw bpf(2) with
// attribute layouts declared here. They match include/uapi/linux/bpf.h of 6.6 and later, which
// only ever grows at the end, so they stay valid on newer kernels.
#include "bpf_util.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <vector>

namespace membrane {

namespace {

// enum bpf_attach_type / enum bpf_link_type values of 6.6+ (checked against the BTF of a 6.18
// kernel: BPF_TCX_INGRESS = 46, BPF_TCX_EGRESS = 47, BPF_LINK_TYPE_TCX = 11). Named apart from
// the uapi enumerators so a newer header that has them does not clash.
constexpr uint32_t kTcxIngress = 46;
constexpr uint32_t kTcxEgress = 47;

// union bpf_attr, the BPF_LINK_CREATE member, up to its tcx part.
struct LinkCreateTcxAttr {
  uint32_t prog_fd;
  uint32_t target_ifindex;
  uint32_t attach_type;
  uint32_t flags;  // BPF_F_BEFORE / BPF_F_AFTER / BPF_F_ID / BPF_F_LINK; 0 appends
  uint32_t relative_fd;  // or relative_id
  uint64_t expected_revision;  // 0: attach whatever the current revision is
};
static_assert(offsetof(LinkCreateTcxAttr, relative_fd) == 16, "link_create.tcx starts after flags");
static_assert(offsetof(LinkCreateTcxAttr, expected_revision) == 24, "tcx.expected_revision is 8-aligned");
static_assert(sizeof(LinkCreateTcxAttr) == 32, "link_create.tcx layout");

// union bpf_attr, the BPF_PROG_QUERY member, through `revision` (6.6+). The kernel writes
// `revision` for tcx queries whatever size we pass, so the struct must reach it: libbpf 1.1's
// bpf_prog_query() uses a union bpf_attr that does not know the field.
struct ProgQueryAttr {
  uint32_t target_ifindex;
  uint32_t attach_type;
  uint32_t query_flags;
  uint32_t attach_flags;
  uint64_t prog_ids;
  uint32_t count;
  uint32_t pad;
  uint64_t prog_attach_flags;
  uint64_t link_ids;
  uint64_t link_attach_flags;
  uint64_t revision;
};
static_assert(offsetof(ProgQueryAttr, prog_ids) == 16, "query.prog_ids");
static_assert(offsetof(ProgQueryAttr, count) == 24, "query.count");
static_assert(offsetof(ProgQueryAttr, revision) == 56, "query.revision");
static_assert(sizeof(ProgQueryAttr) == 64, "query layout");

long Bpf(int cmd, void* attr, size_t size) { return syscall(__NR_bpf, cmd, attr, size); }

bool ArgDirection(Napi::Env env, const Napi::Value& v, const char* what, bool* ingress) {
  std::string s;
  if (!ArgString(env, v, what, &s)) return false;
  if (s != "ingress" && s != "egress") {
    ThrowType(env, std::string(what) + " must be 'ingress' or 'egress', not '" + s + "'");
    return false;
  }
  *ingress = s == "ingress";
  return true;
}

const char* DirName(bool ingress) { return ingress ? "ingress" : "egress"; }

// bpf_tc_hook/bpf_tc_opts carry their own size for libbpf's compatibility checks; zeroing
// first also clears the padding those checks look at.
bpf_tc_hook Hook(uint32_t ifindex, bool ingress) {
  bpf_tc_hook hook;
  std::memset(&hook, 0, sizeof hook);
  hook.sz = sizeof hook;
  hook.ifindex = static_cast<int>(ifindex);
  hook.attach_point = ingress ? BPF_TC_INGRESS : BPF_TC_EGRESS;
  return hook;
}

bpf_tc_opts TcOpts(uint32_t handle, uint32_t priority) {
  bpf_tc_opts opts;
  std::memset(&opts, 0, sizeof opts);
  opts.sz = sizeof opts;
  opts.handle = handle;
  opts.priority = priority;
  return opts;
}

std::string TcWhere(bool ingress, uint32_t ifindex, uint32_t handle, uint32_t priority) {
  return std::string(DirName(ingress)) + " " + std::to_string(ifindex) + " handle " + std::to_string(handle) +
         " priority " + std::to_string(priority);
}

}  // namespace

Napi::Value TcxAttach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t ifindex;
  int prog_fd;
  bool ingress;
  if (!ArgU32(env, info[0], "tcxAttach: ifindex", &ifindex, INT32_MAX) ||
      !ArgFd(env, info[1], "tcxAttach: progFd", &prog_fd) ||
      !ArgDirection(env, info[2], "tcxAttach: direction", &ingress)) {
    return env.Undefined();
  }
  LinkCreateTcxAttr attr;
  std::memset(&attr, 0, sizeof attr);
  attr.prog_fd = static_cast<uint32_t>(prog_fd);
  attr.target_ifindex = ifindex;
  attr.attach_type = ingress ? kTcxIngress : kTcxEgress;
  long fd = Bpf(BPF_LINK_CREATE, &attr, sizeof attr);
  if (fd < 0) {
    return ThrowBpf(env, errno, std::string("BPF_LINK_CREATE tcx ") + DirName(ingress) + " " + std::to_string(ifindex));
  }
  return Napi::Number::New(env, static_cast<double>(fd));
}

Napi::Value BpfLinkUpdate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int link_fd, prog_fd;
  if (!ArgFd(env, info[0], "bpfLinkUpdate: linkFd", &link_fd) ||
      !ArgFd(env, info[1], "bpfLinkUpdate: progFd", &prog_fd)) {
    return env.Undefined();
  }
  int r = bpf_link_update(link_fd, prog_fd, nullptr);
  if (r < 0) return ThrowBpf(env, r, "BPF_LINK_UPDATE " + std::to_string(link_fd));
  return env.Undefined();
}

Napi::Value TcxQuery(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t ifindex;
  bool ingress;
  if (!ArgU32(env, info[0], "tcxQuery: ifindex", &ifindex, INT32_MAX) ||
      !ArgDirection(env, info[1], "tcxQuery: direction", &ingress)) {
    return env.Undefined();
  }
  const std::string op = std::string("BPF_PROG_QUERY tcx ") + DirName(ingress) + " " + std::to_string(ifindex);
  // Room for a typical handful; ENOSPC (more attached than that, or attached meanwhile) reports
  // the current count, and the query is repeated with room for it.
  std::vector<uint32_t> ids(16);
  for (int attempt = 0;; ++attempt) {
    ProgQueryAttr attr;
    std::memset(&attr, 0, sizeof attr);
    attr.target_ifindex = ifindex;
    attr.attach_type = ingress ? kTcxIngress : kTcxEgress;
    attr.prog_ids = reinterpret_cast<uintptr_t>(ids.data());
    attr.count = static_cast<uint32_t>(ids.size());
    if (Bpf(BPF_PROG_QUERY, &attr, sizeof attr) == 0) {
      Napi::Array out = Napi::Array::New(env);
      for (uint32_t i = 0; i < attr.count && i < ids.size(); ++i) out.Set(i, Napi::Number::New(env, ids[i]));
      return out;
    }
    int err = errno;
    if (err != ENOSPC || attempt >= 8) return ThrowBpf(env, err, op);
    ids.resize(static_cast<size_t>(attr.count) + 16);
  }
}

Napi::Value TcAttach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t ifindex, handle, priority;
  int prog_fd;
  bool ingress;
  if (!ArgU32(env, info[0], "tcAttach: ifindex", &ifindex, INT32_MAX) ||
      !ArgFd(env, info[1], "tcAttach: progFd", &prog_fd) ||
      !ArgDirection(env, info[2], "tcAttach: direction", &ingress) ||
      !ArgU32(env, info[3], "tcAttach: handle", &handle) ||
      !ArgU32(env, info[4], "tcAttach: priority", &priority, UINT16_MAX)) {
    return env.Undefined();
  }
  bpf_tc_hook hook = Hook(ifindex, ingress);
  // One clsact qdisc serves both directions; the second attach finds it there already.
  int r;
  {
    // An existing qdisc (EEXIST) is the normal case; libbpf would print the kernel's complaint.
    LogCapture quiet;
    r = bpf_tc_hook_create(&hook);
  }
  if (r < 0 && r != -EEXIST) return ThrowBpf(env, r, "tc qdisc add clsact " + std::to_string(ifindex));
  bpf_tc_opts opts = TcOpts(handle, priority);
  opts.prog_fd = prog_fd;
  opts.flags = BPF_TC_F_REPLACE;
  r = bpf_tc_attach(&hook, &opts);
  if (r < 0) return ThrowBpf(env, r, "tc filter replace " + TcWhere(ingress, ifindex, handle, priority));
  return env.Undefined();
}

Napi::Value TcDetach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t ifindex, handle, priority;
  bool ingress;
  if (!ArgU32(env, info[0], "tcDetach: ifindex", &ifindex, INT32_MAX) ||
      !ArgDirection(env, info[1], "tcDetach: direction", &ingress) ||
      !ArgU32(env, info[2], "tcDetach: handle", &handle) ||
      !ArgU32(env, info[3], "tcDetach: priority", &priority, UINT16_MAX)) {
    return env.Undefined();
  }
  // The qdisc stays: removing clsact would also drop filters that are not ours.
  bpf_tc_hook hook = Hook(ifindex, ingress);
  bpf_tc_opts opts = TcOpts(handle, priority);
  int r;
  {
    // "Nothing to detach" is an answer the caller handles; libbpf would also print it.
    LogCapture quiet;
    r = bpf_tc_detach(&hook, &opts);
  }
  if (r < 0) return ThrowBpf(env, r, "tc filter del " + TcWhere(ingress, ifindex, handle, priority));
  return env.Undefined();
}

}  // namespace membrane
