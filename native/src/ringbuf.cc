// BPF ring buffer consumers on the Node event loop.
//
// libbpf's ring_buffer manager exposes an epoll fd that is readable while any of its rings holds
// unconsumed records (epoll re-checks the ringbuf map's poll state each time it is polled). A
// uv_poll_t watches that fd; when it fires, ring_buffer__consume() drains what is there and hands
// each record to JS as a Buffer copy. No thread and no busy polling.
#include "bpf_util.h"

#include <bpf/libbpf.h>
#include <uv.h>

#include <cerrno>
#include <memory>
#include <string>

namespace membrane {

namespace {

class Consumer {
 public:
  Consumer(napi_env env, int map_fd) : env_(env), map_fd_(map_fd) {}
  ~Consumer() { Stop(); }
  Consumer(const Consumer&) = delete;
  Consumer& operator=(const Consumer&) = delete;

  // Returns 0 or a positive errno.
  int Start(Napi::Object self, Napi::Function callback);
  // Stops polling and releases everything; idempotent. Safe from inside a record callback: the
  // manager is then freed once ring_buffer__consume() has returned.
  void Stop();

 private:
  static int OnRecord(void* ctx, void* data, size_t size);
  static void OnReadable(uv_poll_t* handle, int status, int events);
  static void OnEnvCleanup(void* arg);

  napi_env env_;
  int map_fd_;
  ring_buffer* rb_ = nullptr;
  // Separately allocated: libuv finishes closing it after Stop() returns, and frees it then.
  uv_poll_t* poll_ = nullptr;
  bool consuming_ = false;
  bool stopped_ = false;
  bool hook_ = false;
  // Strong references while polling: the consumer object (the receiver of each call, and what
  // keeps close() - and so this Consumer - reachable) and the callback.
  Napi::ObjectReference self_;
  Napi::FunctionReference callback_;
  std::unique_ptr<Napi::AsyncContext> async_;
};

int Consumer::Start(Napi::Object self, Napi::Function callback) {
  rb_ = ring_buffer__new(map_fd_, OnRecord, this, nullptr);
  if (!rb_) return errno ? errno : EINVAL;
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env_, &loop) != napi_ok || !loop) return EINVAL;
  auto* poll = new uv_poll_t;
  int r = uv_poll_init(loop, poll, ring_buffer__epoll_fd(rb_));
  if (r < 0) {
    delete poll;
    return -r;
  }
  poll->data = this;
  poll_ = poll;
  r = uv_poll_start(poll_, UV_READABLE, OnReadable);
  if (r < 0) return -r;  // the caller's Stop() closes the handle
  async_ = std::make_unique<Napi::AsyncContext>(env_, "membrane:ringbuf", self);
  self_ = Napi::Persistent(self);
  callback_ = Napi::Persistent(callback);
  // If the environment goes away while we poll (worker exit, process exit), the handle must be
  // closed and the manager freed before the loop is.
  if (napi_add_env_cleanup_hook(env_, OnEnvCleanup, this) == napi_ok) hook_ = true;
  return 0;
}

void Consumer::Stop() {
  stopped_ = true;
  if (hook_) {
    napi_remove_env_cleanup_hook(env_, OnEnvCleanup, this);
    hook_ = false;
  }
  if (poll_) {
    // Closing the handle removes the fd from libuv's epoll at once, so the manager (which owns
    // the fd) can be freed right after.
    poll_->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
    poll_ = nullptr;
  }
  if (consuming_) return;  // OnReadable finishes the job
  if (rb_) {
    ring_buffer__free(rb_);
    rb_ = nullptr;
  }
  callback_.Reset();
  self_.Reset();
  async_.reset();
}

int Consumer::OnRecord(void* ctx, void* data, size_t size) {
  auto* c = static_cast<Consumer*>(ctx);
  // Closed by an earlier record's callback: leave the rest unconsumed.
  if (c->stopped_) return -ECANCELED;
  napi_env env = c->env_;
  // Plain N-API rather than node-addon-api here: its wrappers turn any failure into a new Error,
  // which is fatal when the failure is that JS can no longer run (a worker being terminated,
  // e.g. by process.exit() in this very callback).
  napi_value record, result;
  napi_status status = napi_create_buffer_copy(env, size, data, nullptr, &record);
  if (status == napi_ok) {
    // MakeCallback, not Call: this runs from libuv, not from JS, so it must enter the async
    // context and drain microtasks (promises resolved in the callback) as any Node callback does.
    status = napi_make_callback(env, *c->async_, c->self_.Value(), c->callback_.Value(), 1, &record, &result);
  }
  if (status == napi_ok) return 0;
  bool pending = false;
  napi_value exception;
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending &&
      napi_get_and_clear_last_exception(env, &exception) == napi_ok) {
    // Like a throwing event listener: the process's 'uncaughtException'.
    napi_fatal_exception(env, exception);
  }
  // The records after this one stay in the ring; while the consumer is open its fd stays
  // readable, so the next loop iteration delivers them.
  return -ECANCELED;
}

void Consumer::OnReadable(uv_poll_t* handle, int status, int /*events*/) {
  auto* c = static_cast<Consumer*>(handle->data);
  if (!c || !c->rb_) return;
  Napi::Env env(c->env_);
  Napi::HandleScope scope(env);
  if (status < 0) {
    // The epoll fd itself failed (not expected to happen). Report it the only way left, as an
    // uncaught error, and stop rather than spin on it.
    Outcome outcome;
    outcome.error = -status;
    Napi::Error error = ErrnoError(env, outcome, "ring_buffer poll");
    c->Stop();
    napi_fatal_exception(c->env_, error.Value());
    return;
  }
  c->consuming_ = true;
  ring_buffer__consume(c->rb_);  // errors are the callbacks' own, already reported
  c->consuming_ = false;
  if (c->stopped_) c->Stop();
}

void Consumer::OnEnvCleanup(void* arg) {
  auto* c = static_cast<Consumer*>(arg);
  c->hook_ = false;  // running now; removing it from inside is unnecessary
  c->Stop();
}

Napi::Value CloseConsumer(const Napi::CallbackInfo& info) {
  static_cast<Consumer*>(info.Data())->Stop();
  return info.Env().Undefined();
}

}  // namespace

Napi::Value RingbufConsume(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int map_fd;
  if (!ArgFd(env, info[0], "ringbufConsume: mapFd", &map_fd)) return env.Undefined();
  if (!info[1].IsFunction()) return ThrowType(env, "ringbufConsume: onRecord must be a function");
  Napi::Function callback = info[1].As<Napi::Function>();

  // close() owns the Consumer (its finalizer deletes it), so calling close() is always safe;
  // while polling, the Consumer holds the object that holds close(), so neither is collected.
  auto* consumer = new Consumer(env, map_fd);
  Napi::Function close = Napi::Function::New(env, CloseConsumer, "close", consumer);
  if (env.IsExceptionPending()) {
    delete consumer;
    return env.Undefined();
  }
  close.AddFinalizer([](Napi::Env, Consumer* c) { delete c; }, consumer);
  if (env.IsExceptionPending()) return env.Undefined();
  Napi::Object result = Napi::Object::New(env);
  result.Set("close", close);

  LogCapture log;  // ring_buffer__new's warnings only repeat what the error says
  int err = consumer->Start(result, callback);
  if (err) {
    consumer->Stop();
    return ThrowBpf(env, err, "ring_buffer__new " + std::to_string(map_fd));
  }
  return result;
}

}  // namespace membrane
