// The socket side of the service load balancer: cgroup-v2 links for the socket-level programs
// (connect, sendmsg, recvmsg, getpeername), and socket iterators run inside other network
// namespaces (closing the sockets of removed backends with bpf_sock_destroy()).
#include "bpf_util.h"

#include <bpf/bpf.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <sched.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace membrane {

namespace {

struct AttachName {
  const char* name;
  bpf_attach_type type;
};

// The socket-level load balancer's hooks, by the names the TypeScript side uses.
const AttachName kCgroupAttach[] = {
    {"connect4", BPF_CGROUP_INET4_CONNECT},         {"connect6", BPF_CGROUP_INET6_CONNECT},
    {"sendmsg4", BPF_CGROUP_UDP4_SENDMSG},          {"sendmsg6", BPF_CGROUP_UDP6_SENDMSG},
    {"recvmsg4", BPF_CGROUP_UDP4_RECVMSG},          {"recvmsg6", BPF_CGROUP_UDP6_RECVMSG},
    {"getpeername4", BPF_CGROUP_INET4_GETPEERNAME}, {"getpeername6", BPF_CGROUP_INET6_GETPEERNAME},
};

// What the iterator thread hands back per namespace: the iterator's output, or an errno and
// the step that failed.
struct NetnsRun {
  std::string path;
  std::string output;
  int err = 0;
  std::string op;
};

// Runs the iterator once in each namespace, on a thread of its own: setns(2) changes the network
// namespace of the calling thread only, so the JavaScript thread (and libuv's pool) never leave
// the host's. An iterator's sockets are those of the namespace it is created in.
void RunIterators(int link_fd, std::vector<NetnsRun>* runs) {
  int home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  for (NetnsRun& run : *runs) {
    int ns = open(run.path.c_str(), O_RDONLY | O_CLOEXEC);
    if (ns < 0) {
      run.err = errno;
      run.op = "open " + run.path;
      continue;
    }
    if (setns(ns, CLONE_NEWNET) < 0) {
      run.err = errno;
      run.op = "setns " + run.path;
      close(ns);
      continue;
    }
    close(ns);
    int it = bpf_iter_create(link_fd);
    if (it < 0) {
      run.err = errno;
      run.op = "bpf_iter_create in " + run.path;
    } else {
      char buf[4096];
      for (;;) {
        ssize_t n = read(it, buf, sizeof buf);
        if (n > 0) {
          run.output.append(buf, static_cast<size_t>(n));
          continue;
        }
        if (n < 0 && errno == EAGAIN) continue;
        if (n < 0) {
          run.err = errno;
          run.op = "read iterator in " + run.path;
        }
        break;
      }
      close(it);
    }
  }
  if (home >= 0) {
    setns(home, CLONE_NEWNET);
    close(home);
  }
}

}  // namespace

// cgroupLinkCreate(cgroupPath, progFd, hook) -> link fd: the program on every socket of the
// cgroup and its descendants (the root: every process), through a link the caller pins.
Napi::Value CgroupLinkCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path, hook;
  int prog_fd;
  if (!ArgString(env, info[0], "cgroupLinkCreate: cgroupPath", &path) ||
      !ArgFd(env, info[1], "cgroupLinkCreate: progFd", &prog_fd) ||
      !ArgString(env, info[2], "cgroupLinkCreate: hook", &hook)) {
    return env.Undefined();
  }
  const AttachName* found = nullptr;
  for (const AttachName& a : kCgroupAttach) {
    if (hook == a.name) found = &a;
  }
  if (!found) return ThrowType(env, "cgroupLinkCreate: hook must be connect4/6, sendmsg4/6, recvmsg4/6 or getpeername4/6, not " + hook);
  int cgroup = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (cgroup < 0) return ThrowBpf(env, errno, "open cgroup " + path);
  int fd = bpf_link_create(prog_fd, cgroup, found->type, nullptr);
  int err = fd < 0 ? -fd : 0;
  close(cgroup);
  if (fd < 0) return ThrowBpf(env, err, "BPF_LINK_CREATE " + hook + " " + path);
  return Napi::Number::New(env, fd);
}

// iterLinkCreate(progFd) -> link fd of an iterator program (iter/tcp, iter/udp).
Napi::Value IterLinkCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int prog_fd;
  if (!ArgFd(env, info[0], "iterLinkCreate: progFd", &prog_fd)) return env.Undefined();
  int fd = bpf_link_create(prog_fd, 0, BPF_TRACE_ITER, nullptr);
  if (fd < 0) return ThrowBpf(env, -fd, "BPF_LINK_CREATE iter");
  return Napi::Number::New(env, fd);
}

// iterRun(linkFd, netnsPaths) -> [{path, output: Buffer} | {path, errno, code, op}]: the iterator
// run to its end once in each network namespace (paths like /var/run/docker/netns/<id> or
// /proc/1/ns/net). Synchronous: it blocks until every namespace is done.
Napi::Value IterRun(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int link_fd;
  if (!ArgFd(env, info[0], "iterRun: linkFd", &link_fd)) return env.Undefined();
  if (!info[1].IsArray()) return ThrowType(env, "iterRun: netnsPaths must be an array of paths");
  Napi::Array paths = info[1].As<Napi::Array>();
  std::vector<NetnsRun> runs;
  for (uint32_t i = 0; i < paths.Length(); ++i) {
    std::string path;
    if (!ArgString(env, paths.Get(i), "iterRun: netnsPaths[i]", &path)) return env.Undefined();
    runs.push_back(NetnsRun{path, "", 0, ""});
  }
  std::thread worker(RunIterators, link_fd, &runs);
  worker.join();
  Napi::Array out = Napi::Array::New(env, runs.size());
  for (uint32_t i = 0; i < runs.size(); ++i) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("path", Napi::String::New(env, runs[i].path));
    if (runs[i].err) {
      Napi::Error e = BpfError(env, runs[i].err, runs[i].op);
      o.Set("errno", e.Value().Get("errno"));
      o.Set("code", e.Value().Get("code"));
      o.Set("message", e.Value().Get("message"));
    } else {
      o.Set("output", Napi::Buffer<uint8_t>::Copy(env, reinterpret_cast<const uint8_t*>(runs[i].output.data()), runs[i].output.size()));
    }
    out.Set(i, o);
  }
  return out;
}

}  // namespace membrane
