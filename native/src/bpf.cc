// bpf(2) through libbpf: loading objects, map access, BPF_PROG_TEST_RUN, plus the plumbing shared
// with tc.cc and ringbuf.cc (errors, libbpf log capture, fd and Buffer arguments).
#include "bpf_util.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <functional>
#include <memory>
#include <vector>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

namespace membrane {

// ---- Errors --------------------------------------------------------------------------------

namespace {

const char* LibbpfErrnoName(int err) {
  switch (err) {
#define E(name)           \
  case LIBBPF_ERRNO__##name: \
    return "LIBBPF_ERRNO__" #name;
    E(LIBELF) E(FORMAT) E(KVERSION) E(ENDIAN) E(INTERNAL) E(RELOC) E(LOAD) E(VERIFY) E(PROG2BIG) E(KVER)
    E(PROGTYPE) E(WRNGPID) E(INVSEQ) E(NLPARSE)
#undef E
    default:
      return nullptr;
  }
}

}  // namespace

Napi::Error BpfError(Napi::Env env, int err, const std::string& op) {
  if (err < 0) err = -err;
  if (err == 0) err = EINVAL;  // a failure that set no error code: should not happen, but never report "Success"
  const char* name = LibbpfErrnoName(err);
  if (!name) {
    Outcome outcome;
    outcome.error = err;
    return ErrnoError(env, outcome, op);
  }
  char text[128];
  libbpf_strerror(err, text, sizeof text);
  Napi::Error error = Napi::Error::New(env, op + ": " + text);
  Napi::Object obj = error.Value();
  obj.Set("errno", Napi::Number::New(env, err));
  obj.Set("code", Napi::String::New(env, name));
  obj.Set("op", Napi::String::New(env, op));
  return error;
}

Napi::Value ThrowBpf(Napi::Env env, int err, const std::string& op) {
  BpfError(env, err, op).ThrowAsJavaScriptException();
  return env.Undefined();
}

// ---- libbpf log ----------------------------------------------------------------------------

namespace {

thread_local LogCapture* current_capture = nullptr;

int LibbpfPrint(enum libbpf_print_level level, const char* format, va_list args) {
  LogCapture* capture = current_capture;
  if (!capture) {
    // Debug output is a running commentary on every load; libbpf itself only prints the rest.
    if (level == LIBBPF_WARN) return std::vfprintf(stderr, format, args);
    return 0;
  }
  if (level == LIBBPF_DEBUG) return 0;
  va_list sizing;
  va_copy(sizing, args);
  int n = std::vsnprintf(nullptr, 0, format, sizing);
  va_end(sizing);
  if (n <= 0) return n;
  std::string s(static_cast<size_t>(n) + 1, '\0');
  std::vsnprintf(&s[0], s.size(), format, args);
  s.resize(static_cast<size_t>(n));
  capture->Append(s);
  return n;
}

}  // namespace

LogCapture::LogCapture() : prev_(current_capture) { current_capture = this; }
LogCapture::~LogCapture() { current_capture = prev_; }

void InstallLibbpfPrint() { libbpf_set_print(LibbpfPrint); }

// ---- Arguments -----------------------------------------------------------------------------

bool ArgFd(Napi::Env env, const Napi::Value& v, const char* what, int* out) {
  uint32_t fd;
  if (!ArgU32(env, v, what, &fd, INT32_MAX)) return false;
  *out = static_cast<int>(fd);
  return true;
}

bool ArgBuffer(Napi::Env env, const Napi::Value& v, const char* what, Napi::Buffer<uint8_t>* out) {
  if (!v.IsBuffer()) {
    ThrowType(env, std::string(what) + " must be a Buffer");
    return false;
  }
  *out = v.As<Napi::Buffer<uint8_t>>();
  return true;
}

bool OptBuffer(Napi::Env env, const Napi::Object& o, const char* key, const std::string& what, bool* present,
               Napi::Buffer<uint8_t>* out) {
  Napi::Value v = o.Get(key);
  if (v.IsEmpty()) return false;
  *present = !(v.IsUndefined() || v.IsNull());
  return !*present || ArgBuffer(env, v, what.c_str(), out);
}

// ---- Objects -------------------------------------------------------------------------------

namespace {

struct ObjectCloser {
  void operator()(bpf_object* obj) const { bpf_object__close(obj); }
};
using ObjectPtr = std::unique_ptr<bpf_object, ObjectCloser>;

// Owned by the object's close() function (its finalizer deletes it), so the maps' and programs'
// fds stay open for as long as JS can still reach close(), and no longer than that.
struct LoadedObject {
  ObjectPtr obj;
};

Napi::Value CloseObject(const Napi::CallbackInfo& info) {
  // Idempotent: a second close() finds nothing left to close.
  static_cast<LoadedObject*>(info.Data())->obj.reset();
  return info.Env().Undefined();
}

int GetMapInfo(int fd, bpf_map_info* info) {
  std::memset(info, 0, sizeof *info);
  __u32 len = sizeof *info;
  int r = bpf_obj_get_info_by_fd(fd, info, &len);
  return r < 0 ? -r : 0;
}

Napi::Object MapInfoObject(Napi::Env env, const bpf_map_info& info) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("type", Napi::Number::New(env, info.type));
  o.Set("keySize", Napi::Number::New(env, info.key_size));
  o.Set("valueSize", Napi::Number::New(env, info.value_size));
  o.Set("maxEntries", Napi::Number::New(env, info.max_entries));
  o.Set("flags", Napi::Number::New(env, info.map_flags));
  o.Set("name", Napi::String::New(env, std::string(info.name, strnlen(info.name, sizeof info.name))));
  o.Set("id", Napi::Number::New(env, info.id));
  return o;
}

// An error from opening or loading an object, with what libbpf printed meanwhile (for a program
// the verifier rejected, its log sits between "-- BEGIN PROG LOAD LOG --" and "-- END ...").
Napi::Value ThrowLoad(Napi::Env env, int err, const std::string& op, const LogCapture& log) {
  Napi::Error error = BpfError(env, err, op);
  error.Value().Set("verifierLog", Napi::String::New(env, log.text()));
  error.ThrowAsJavaScriptException();
  return env.Undefined();
}

bool EndsWith(const char* s, const char* suffix) {
  size_t n = std::strlen(s), m = std::strlen(suffix);
  return n >= m && std::strcmp(s + n - m, suffix) == 0;
}

template <typename T>
using NamedValues = std::vector<std::pair<std::string, T>>;

// Reads an optional { [mapName]: T } option. Property names come from JS as they are; whether a
// map of that name exists is only known once the object is open.
template <typename T, typename ReadFn>
bool OptRecord(Napi::Env env, const Napi::Object& opts, const char* key, const std::string& what, NamedValues<T>* out,
               ReadFn read) {
  Napi::Value v = opts.Get(key);
  if (v.IsEmpty()) return false;
  if (v.IsUndefined() || v.IsNull()) return true;
  Napi::Object record;
  if (!ArgObject(env, v, what.c_str(), &record)) return false;
  Napi::Array names = record.GetPropertyNames();
  if (names.IsEmpty()) return false;
  for (uint32_t i = 0; i < names.Length(); ++i) {
    Napi::Value name = names.Get(i);
    if (name.IsEmpty()) return false;
    std::string map_name = name.As<Napi::String>().Utf8Value();
    T value;
    if (!read(record.Get(map_name), what + "['" + map_name + "']", &value)) return false;
    out->emplace_back(std::move(map_name), std::move(value));
  }
  return true;
}

}  // namespace

Napi::Value BpfObjectLoad(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path;
  Napi::Object opts;
  NamedValues<std::string> pin_paths;
  NamedValues<uint32_t> max_entries;
  NamedValues<bool> autoload;
  Napi::Buffer<uint8_t> rodata;
  bool has_rodata = false;
  if (!ArgString(env, info[0], "bpfObjectLoad: path", &path) ||
      !ArgObject(env, info[1], "bpfObjectLoad: options", &opts) ||
      !OptRecord(env, opts, "pinPaths", "bpfObjectLoad: options.pinPaths", &pin_paths,
                 [&](const Napi::Value& v, const std::string& what, std::string* out) {
                   return !v.IsEmpty() && ArgString(env, v, what.c_str(), out);
                 }) ||
      !OptRecord(env, opts, "maxEntries", "bpfObjectLoad: options.maxEntries", &max_entries,
                 [&](const Napi::Value& v, const std::string& what, uint32_t* out) {
                   return !v.IsEmpty() && ArgU32(env, v, what.c_str(), out);
                 }) ||
      !OptRecord(env, opts, "autoload", "bpfObjectLoad: options.autoload", &autoload,
                 [&](const Napi::Value& v, const std::string& what, bool* out) {
                   if (v.IsEmpty() || !v.IsBoolean()) {
                     ThrowType(env, what + " must be true or false");
                     return false;
                   }
                   *out = v.As<Napi::Boolean>().Value();
                   return true;
                 }) ||
      !OptBuffer(env, opts, "rodata", "bpfObjectLoad: options.rodata", &has_rodata, &rodata)) {
    return env.Undefined();
  }

  LogCapture log;
  ObjectPtr obj(bpf_object__open_file(path.c_str(), nullptr));
  if (!obj) return ThrowLoad(env, errno, "bpf_object__open_file " + path, log);

  for (const auto& [name, pin] : pin_paths) {
    bpf_map* map = bpf_object__find_map_by_name(obj.get(), name.c_str());
    if (!map) return ThrowLoad(env, ENOENT, "bpf_object__find_map_by_name " + name + " in " + path, log);
    // libbpf reuses a compatible map pinned there (and fails the load on an incompatible one),
    // or pins the map it creates.
    int r = bpf_map__set_pin_path(map, pin.c_str());
    if (r < 0) return ThrowLoad(env, r, "bpf_map__set_pin_path " + name + " " + pin, log);
  }
  // Programs a kernel lacks the hooks or helpers for are not loaded (the caller probed).
  for (const auto& [name, load] : autoload) {
    bpf_program* prog = bpf_object__find_program_by_name(obj.get(), name.c_str());
    if (!prog) return ThrowLoad(env, ENOENT, "bpf_object__find_program_by_name " + name + " in " + path, log);
    int r = bpf_program__set_autoload(prog, load);
    if (r < 0) return ThrowLoad(env, r, "bpf_program__set_autoload " + name, log);
  }
  for (const auto& [name, n] : max_entries) {
    bpf_map* map = bpf_object__find_map_by_name(obj.get(), name.c_str());
    if (!map) return ThrowLoad(env, ENOENT, "bpf_object__find_map_by_name " + name + " in " + path, log);
    int r = bpf_map__set_max_entries(map, n);
    if (r < 0) return ThrowLoad(env, r, "bpf_map__set_max_entries " + name, log);
  }
  if (has_rodata) {
    // libbpf names the map after (a prefix of) the object file: '<obj>.rodata'. Sections like
    // '.rodata.str1.1' (string literals) are separate maps and are not what the caller means.
    bpf_map* found = nullptr;
    bpf_map* map;
    bpf_object__for_each_map(map, obj.get()) {
      if (EndsWith(bpf_map__name(map), ".rodata")) found = map;
    }
    if (!found) return ThrowType(env, "bpfObjectLoad: options.rodata given, but " + path + " has no .rodata section");
    size_t size = 0;
    bpf_map__initial_value(found, &size);
    if (size != rodata.Length()) {
      return ThrowType(env, "bpfObjectLoad: options.rodata must be " + std::to_string(size) + " bytes (the .rodata of " +
                                path + "), not " + std::to_string(rodata.Length()));
    }
    int r = bpf_map__set_initial_value(found, rodata.Data(), rodata.Length());
    if (r < 0) return ThrowLoad(env, r, std::string("bpf_map__set_initial_value ") + bpf_map__name(found), log);
  }

  int r = bpf_object__load(obj.get());
  if (r < 0) return ThrowLoad(env, r, "bpf_object__load " + path, log);

  Napi::Array maps = Napi::Array::New(env);
  uint32_t n_maps = 0;
  bpf_map* map;
  bpf_object__for_each_map(map, obj.get()) {
    int fd = bpf_map__fd(map);
    if (fd < 0) continue;  // not created (autocreate off): nothing to hand out
    bpf_map_info mi;
    int err = GetMapInfo(fd, &mi);
    if (err) return ThrowBpf(env, err, std::string("BPF_OBJ_GET_INFO_BY_FD map ") + bpf_map__name(map));
    Napi::Object m = Napi::Object::New(env);
    m.Set("name", Napi::String::New(env, bpf_map__name(map)));
    m.Set("fd", Napi::Number::New(env, fd));
    m.Set("info", MapInfoObject(env, mi));
    maps.Set(n_maps++, m);
  }
  Napi::Array programs = Napi::Array::New(env);
  uint32_t n_progs = 0;
  bpf_program* prog;
  bpf_object__for_each_program(prog, obj.get()) {
    int fd = bpf_program__fd(prog);
    if (fd < 0) continue;  // autoload off
    Napi::Object p = Napi::Object::New(env);
    p.Set("name", Napi::String::New(env, bpf_program__name(prog)));
    p.Set("section", Napi::String::New(env, bpf_program__section_name(prog)));
    p.Set("fd", Napi::Number::New(env, fd));
    programs.Set(n_progs++, p);
  }

  auto* loaded = new LoadedObject{std::move(obj)};
  Napi::Function close = Napi::Function::New(env, CloseObject, "close", loaded);
  if (env.IsExceptionPending()) {
    delete loaded;
    return env.Undefined();
  }
  close.AddFinalizer([](Napi::Env, LoadedObject* o) { delete o; }, loaded);
  if (env.IsExceptionPending()) return env.Undefined();  // the finalizer was not attached; leak rather than double-close

  Napi::Object result = Napi::Object::New(env);
  result.Set("close", close);
  result.Set("maps", maps);
  result.Set("programs", programs);
  return result;
}

// ---- Pins and fds --------------------------------------------------------------------------

Napi::Value BpfObjGet(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path;
  if (!ArgString(env, info[0], "bpfObjGet: path", &path)) return env.Undefined();
  int fd = bpf_obj_get(path.c_str());
  if (fd < 0) return ThrowBpf(env, fd, "BPF_OBJ_GET " + path);
  return Napi::Number::New(env, fd);
}

Napi::Value BpfObjPin(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  std::string path;
  if (!ArgFd(env, info[0], "bpfObjPin: fd", &fd) || !ArgString(env, info[1], "bpfObjPin: path", &path)) {
    return env.Undefined();
  }
  int r = bpf_obj_pin(fd, path.c_str());
  if (r < 0) return ThrowBpf(env, r, "BPF_OBJ_PIN " + path);
  return env.Undefined();
}

Napi::Value BpfClose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgFd(env, info[0], "bpfClose: fd", &fd)) return env.Undefined();
  // No EINTR retry: on Linux the fd is released even when close reports EINTR, and retrying
  // could close an fd another thread just got.
  if (close(fd) < 0 && errno != EINTR) return ThrowBpf(env, errno, "close " + std::to_string(fd));
  return env.Undefined();
}

// ---- Maps ----------------------------------------------------------------------------------

namespace {

// Key and value sizes as the syscall expects them. Per-CPU maps read and write one value per
// possible CPU, each padded to 8 bytes.
struct MapShape {
  uint32_t key_size = 0;
  size_t value_size = 0;
};

int GetMapShape(int fd, MapShape* out) {
  bpf_map_info mi;
  int err = GetMapInfo(fd, &mi);
  if (err) return err;
  out->key_size = mi.key_size;
  out->value_size = mi.value_size;
  switch (mi.type) {
    case BPF_MAP_TYPE_PERCPU_HASH:
    case BPF_MAP_TYPE_PERCPU_ARRAY:
    case BPF_MAP_TYPE_LRU_PERCPU_HASH:
    case BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE: {
      int cpus = libbpf_num_possible_cpus();
      if (cpus < 0) return -cpus;
      out->value_size = ((static_cast<size_t>(mi.value_size) + 7) & ~size_t{7}) * static_cast<size_t>(cpus);
      break;
    }
    default:
      break;
  }
  return 0;
}

// Checks a key or value Buffer against the map's size; a TypeError names both.
bool CheckSize(Napi::Env env, const char* what, const Napi::Buffer<uint8_t>& buf, size_t want, int fd) {
  if (buf.Length() == want) return true;
  ThrowType(env, std::string(what) + " must be " + std::to_string(want) + " bytes for map fd " + std::to_string(fd) +
                     ", not " + std::to_string(buf.Length()));
  return false;
}

// Maps with 0-byte keys or values (queues, ringbufs) still need a valid pointer for the kernel's
// copy of nothing; an empty Buffer may not have one.
const void* Ptr(const Napi::Buffer<uint8_t>& buf) {
  static const uint8_t empty = 0;
  return buf.Length() ? buf.Data() : &empty;
}

}  // namespace

Napi::Value BpfMapInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgFd(env, info[0], "bpfMapInfo: fd", &fd)) return env.Undefined();
  bpf_map_info mi;
  int err = GetMapInfo(fd, &mi);
  if (err) return ThrowBpf(env, err, "BPF_OBJ_GET_INFO_BY_FD " + std::to_string(fd));
  return MapInfoObject(env, mi);
}

// bpfMapCreate(type, keySize, valueSize, maxEntries, {flags?, name?}) -> fd the caller owns.
// For maps the daemon makes itself: the per-endpoint policy maps that go into mb_policy.
Napi::Value BpfMapCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t type, key_size, value_size, max_entries, flags = 0;
  bool has_flags = false, has_name = false;
  std::string name;
  if (!ArgU32(env, info[0], "bpfMapCreate: type", &type) || !ArgU32(env, info[1], "bpfMapCreate: keySize", &key_size) ||
      !ArgU32(env, info[2], "bpfMapCreate: valueSize", &value_size) ||
      !ArgU32(env, info[3], "bpfMapCreate: maxEntries", &max_entries)) {
    return env.Undefined();
  }
  if (info.Length() > 4 && info[4].IsObject()) {
    Napi::Object opts = info[4].As<Napi::Object>();
    if (!OptU32(env, opts, "flags", "bpfMapCreate: options.flags", &has_flags, &flags) ||
        !OptString(env, opts, "name", "bpfMapCreate: options.name", &has_name, &name)) {
      return env.Undefined();
    }
  }
  LIBBPF_OPTS(bpf_map_create_opts, opts, .map_flags = flags);
  int fd = bpf_map_create(static_cast<enum bpf_map_type>(type), has_name ? name.c_str() : nullptr, key_size, value_size,
                          max_entries, &opts);
  if (fd < 0) return ThrowBpf(env, fd, "BPF_MAP_CREATE type " + std::to_string(type));
  return Napi::Number::New(env, fd);
}

// bpfMapGetFdById(id) -> fd the caller owns. Lookups in a map of maps return inner map ids.
Napi::Value BpfMapGetFdById(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t id;
  if (!ArgU32(env, info[0], "bpfMapGetFdById: id", &id)) return env.Undefined();
  int fd = bpf_map_get_fd_by_id(id);
  if (fd < 0) return ThrowBpf(env, fd, "BPF_MAP_GET_FD_BY_ID " + std::to_string(id));
  return Napi::Number::New(env, fd);
}

Napi::Value BpfMapLookup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  Napi::Buffer<uint8_t> key;
  if (!ArgFd(env, info[0], "bpfMapLookup: fd", &fd) || !ArgBuffer(env, info[1], "bpfMapLookup: key", &key)) {
    return env.Undefined();
  }
  const std::string op = "BPF_MAP_LOOKUP_ELEM " + std::to_string(fd);
  MapShape shape;
  int err = GetMapShape(fd, &shape);
  if (err) return ThrowBpf(env, err, op);
  if (!CheckSize(env, "bpfMapLookup: key", key, shape.key_size, fd)) return env.Undefined();
  Napi::Buffer<uint8_t> value = Napi::Buffer<uint8_t>::New(env, shape.value_size);
  if (env.IsExceptionPending()) return env.Undefined();
  uint8_t scratch;
  int r = bpf_map_lookup_elem(fd, Ptr(key), shape.value_size ? value.Data() : &scratch);
  if (r == -ENOENT) return env.Null();
  if (r < 0) return ThrowBpf(env, r, op);
  return value;
}

namespace {

// The arguments of bpfMapUpdate and bpfMapUpdateAsync, checked against the map's key and value
// sizes. False with a pending exception when they do not fit.
struct MapWrite {
  int fd;
  Napi::Buffer<uint8_t> key, value;
  uint32_t flags;
  std::string op;
};

bool ParseMapWrite(const Napi::CallbackInfo& info, const std::string& fn, MapWrite* w) {
  Napi::Env env = info.Env();
  if (!ArgFd(env, info[0], (fn + ": fd").c_str(), &w->fd) || !ArgBuffer(env, info[1], (fn + ": key").c_str(), &w->key) ||
      !ArgBuffer(env, info[2], (fn + ": value").c_str(), &w->value) || !ArgU32(env, info[3], (fn + ": flags").c_str(), &w->flags)) {
    return false;
  }
  w->op = "BPF_MAP_UPDATE_ELEM " + std::to_string(w->fd);
  MapShape shape;
  int err = GetMapShape(w->fd, &shape);
  if (err) {
    ThrowBpf(env, err, w->op);
    return false;
  }
  return CheckSize(env, (fn + ": key").c_str(), w->key, shape.key_size, w->fd) &&
         CheckSize(env, (fn + ": value").c_str(), w->value, shape.value_size, w->fd);
}

}  // namespace

Napi::Value BpfMapUpdate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  MapWrite w;
  if (!ParseMapWrite(info, "bpfMapUpdate", &w)) return env.Undefined();
  int r = bpf_map_update_elem(w.fd, Ptr(w.key), Ptr(w.value), w.flags);
  if (r < 0) return ThrowBpf(env, r, w.op);
  return env.Undefined();
}

Napi::Value BpfMapDelete(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  Napi::Buffer<uint8_t> key;
  if (!ArgFd(env, info[0], "bpfMapDelete: fd", &fd) || !ArgBuffer(env, info[1], "bpfMapDelete: key", &key)) {
    return env.Undefined();
  }
  const std::string op = "BPF_MAP_DELETE_ELEM " + std::to_string(fd);
  MapShape shape;
  int err = GetMapShape(fd, &shape);
  if (err) return ThrowBpf(env, err, op);
  if (!CheckSize(env, "bpfMapDelete: key", key, shape.key_size, fd)) return env.Undefined();
  int r = bpf_map_delete_elem(fd, Ptr(key));
  if (r == -ENOENT) return Napi::Boolean::New(env, false);
  if (r < 0) return ThrowBpf(env, r, op);
  return Napi::Boolean::New(env, true);
}

Napi::Value BpfMapNextKey(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  Napi::Buffer<uint8_t> key;
  const bool first = info[1].IsNull() || info[1].IsUndefined();
  if (!ArgFd(env, info[0], "bpfMapNextKey: fd", &fd) ||
      (!first && !ArgBuffer(env, info[1], "bpfMapNextKey: key", &key))) {
    return env.Undefined();
  }
  const std::string op = "BPF_MAP_GET_NEXT_KEY " + std::to_string(fd);
  MapShape shape;
  int err = GetMapShape(fd, &shape);
  if (err) return ThrowBpf(env, err, op);
  if (!first && !CheckSize(env, "bpfMapNextKey: key", key, shape.key_size, fd)) return env.Undefined();
  Napi::Buffer<uint8_t> next = Napi::Buffer<uint8_t>::New(env, shape.key_size);
  if (env.IsExceptionPending()) return env.Undefined();
  uint8_t scratch;
  // A NULL key asks for the first one (and so does a key that is not in the map, for hashes).
  int r = bpf_map_get_next_key(fd, first ? nullptr : Ptr(key), shape.key_size ? next.Data() : &scratch);
  if (r == -ENOENT) return env.Null();
  if (r < 0) return ThrowBpf(env, r, op);
  return next;
}

// Reads up to `max` entries with BPF_MAP_LOOKUP_BATCH (kernel >= 5.6): one syscall per chunk of
// entries instead of two per entry. Returns {count, keys, values}, keys and values concatenated
// at their fixed strides. Map types without batch support fail with EINVAL; the caller falls
// back to iterating with bpfMapNextKey.
Napi::Value BpfMapLookupBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  uint32_t max;
  if (!ArgFd(env, info[0], "bpfMapLookupBatch: fd", &fd) || !ArgU32(env, info[1], "bpfMapLookupBatch: max", &max, 1u << 24)) {
    return env.Undefined();
  }
  const std::string op = "BPF_MAP_LOOKUP_BATCH " + std::to_string(fd);
  MapShape shape;
  int err = GetMapShape(fd, &shape);
  if (err) return ThrowBpf(env, err, op);
  // Grown batch by batch: `max` is a bound, not a size to allocate (a map of 1 KiB values with
  // room for 262144 entries would otherwise cost 256 MiB to read three entries).
  std::vector<uint8_t> keys, values;
  // The batch token is opaque: a bucket index for hashes, a key for arrays. Room for either.
  std::vector<uint8_t> token(std::max<size_t>(shape.key_size, 8)), next(token.size());
  uint32_t total = 0;
  bool first = true;
  while (total < max) {
    uint32_t count = std::min<uint32_t>(max - total, 4096);
    keys.resize(static_cast<size_t>(total + count) * shape.key_size);
    values.resize(static_cast<size_t>(total + count) * shape.value_size);
    LIBBPF_OPTS(bpf_map_batch_opts, opts);
    int r = bpf_map_lookup_batch(fd, first ? nullptr : token.data(), next.data(), keys.data() + static_cast<size_t>(total) * shape.key_size,
                                 values.data() + static_cast<size_t>(total) * shape.value_size, &count, &opts);
    if (r < 0) r = -errno;
    if (r < 0 && r != -ENOENT) return ThrowBpf(env, -r, op);
    total += count;
    if (r == -ENOENT) break;  // the whole map was read
    token.swap(next);
    first = false;
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("count", Napi::Number::New(env, total));
  out.Set("keys", Napi::Buffer<uint8_t>::Copy(env, keys.data(), static_cast<size_t>(total) * shape.key_size));
  out.Set("values", Napi::Buffer<uint8_t>::Copy(env, values.data(), static_cast<size_t>(total) * shape.value_size));
  return out;
}

// BPF_MAP_UPDATE_BATCH: `count` entries, keys and values concatenated at their sizes. Returns
// how many the kernel applied (all of them unless it failed part-way, which throws).
Napi::Value BpfMapUpdateBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  Napi::Buffer<uint8_t> keys, values;
  uint32_t flags;
  if (!ArgFd(env, info[0], "bpfMapUpdateBatch: fd", &fd) || !ArgBuffer(env, info[1], "bpfMapUpdateBatch: keys", &keys) ||
      !ArgBuffer(env, info[2], "bpfMapUpdateBatch: values", &values) || !ArgU32(env, info[3], "bpfMapUpdateBatch: flags", &flags)) {
    return env.Undefined();
  }
  const std::string op = "BPF_MAP_UPDATE_BATCH " + std::to_string(fd);
  MapShape shape;
  int err = GetMapShape(fd, &shape);
  if (err) return ThrowBpf(env, err, op);
  if (shape.key_size == 0 || keys.Length() % shape.key_size != 0 ||
      values.Length() != keys.Length() / shape.key_size * shape.value_size) {
    return ThrowType(env, "bpfMapUpdateBatch: keys must be a multiple of " + std::to_string(shape.key_size) +
                              " bytes and values the same count of " + std::to_string(shape.value_size) + "-byte values");
  }
  uint32_t count = static_cast<uint32_t>(keys.Length() / shape.key_size);
  if (count == 0) return Napi::Number::New(env, 0);
  LIBBPF_OPTS(bpf_map_batch_opts, opts, .elem_flags = flags);
  int r = bpf_map_update_batch(fd, keys.Data(), values.Data(), &count, &opts);
  if (r < 0) return ThrowBpf(env, errno ? errno : -r, op);
  return Napi::Number::New(env, count);
}

// BPF_MAP_DELETE_BATCH: deletes `keys` (concatenated). Keys already gone are skipped, not errors.
namespace {

// BPF_MAP_DELETE_BATCH of `total` keys; 0 or a positive errno. The kernel stops at the first
// missing key (ENOENT): it is skipped and the rest deleted.
int DeleteBatch(int fd, const uint8_t* keys, uint32_t total, uint32_t key_size) {
  uint32_t deleted = 0;
  while (deleted < total) {
    uint32_t count = total - deleted;
    LIBBPF_OPTS(bpf_map_batch_opts, opts);
    int r = bpf_map_delete_batch(fd, keys + static_cast<size_t>(deleted) * key_size, &count, &opts);
    int e = r < 0 ? (errno ? errno : -r) : 0;
    if (e && e != ENOENT) return e;
    deleted += count;
    if (e == ENOENT) deleted++;  // the missing key
  }
  return 0;
}

}  // namespace

Napi::Value BpfMapDeleteBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  Napi::Buffer<uint8_t> keys;
  if (!ArgFd(env, info[0], "bpfMapDeleteBatch: fd", &fd) || !ArgBuffer(env, info[1], "bpfMapDeleteBatch: keys", &keys)) {
    return env.Undefined();
  }
  const std::string op = "BPF_MAP_DELETE_BATCH " + std::to_string(fd);
  MapShape shape;
  int err = GetMapShape(fd, &shape);
  if (err) return ThrowBpf(env, err, op);
  if (shape.key_size == 0 || keys.Length() % shape.key_size != 0) {
    return ThrowType(env, "bpfMapDeleteBatch: keys must be a multiple of " + std::to_string(shape.key_size) + " bytes");
  }
  const uint32_t total = static_cast<uint32_t>(keys.Length() / shape.key_size);
  int e = DeleteBatch(fd, keys.Data(), total, shape.key_size);
  if (e) return ThrowBpf(env, e, op);
  return Napi::Number::New(env, total);
}

// ---- map writes on a worker thread --------------------------------------------------------
//
// An insert into or delete from a map of maps (mb_policy) waits for an RCU grace period before
// the syscall returns (10-20 ms here). Done on a libuv worker thread, the event loop serves
// Docker's calls meanwhile; none of this takes the rtnl lock. The buffers are copied: the caller
// may reuse its own.

namespace {

class BpfCallWorker : public Napi::AsyncWorker {
 public:
  BpfCallWorker(Napi::Env env, std::function<int()> call, std::string op)
      : Napi::AsyncWorker(env), call_(std::move(call)), op_(std::move(op)), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { err_ = call_(); }
  void OnOK() override {
    if (err_) deferred_.Reject(BpfError(Env(), err_, op_).Value());
    else deferred_.Resolve(Env().Undefined());
  }

 private:
  std::function<int()> call_;
  std::string op_;
  int err_ = 0;
  Napi::Promise::Deferred deferred_;
};

}  // namespace

Napi::Value BpfMapUpdateAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  MapWrite w;
  if (!ParseMapWrite(info, "bpfMapUpdateAsync", &w)) return env.Undefined();
  auto k = std::make_shared<std::vector<uint8_t>>(w.key.Data(), w.key.Data() + w.key.Length());
  auto v = std::make_shared<std::vector<uint8_t>>(w.value.Data(), w.value.Data() + w.value.Length());
  const int fd = w.fd;
  const uint32_t flags = w.flags;
  auto* worker = new BpfCallWorker(env, [fd, k, v, flags]() {
    int r = bpf_map_update_elem(fd, k->data(), v->data(), flags);
    return r < 0 ? (errno ? errno : -r) : 0;
  }, w.op);
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

Napi::Value BpfMapDeleteBatchAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  Napi::Buffer<uint8_t> keys;
  if (!ArgFd(env, info[0], "bpfMapDeleteBatchAsync: fd", &fd) || !ArgBuffer(env, info[1], "bpfMapDeleteBatchAsync: keys", &keys)) {
    return env.Undefined();
  }
  const std::string op = "BPF_MAP_DELETE_BATCH " + std::to_string(fd);
  MapShape shape;
  int err = GetMapShape(fd, &shape);
  if (err) return ThrowBpf(env, err, op);
  if (shape.key_size == 0 || keys.Length() % shape.key_size != 0) {
    return ThrowType(env, "bpfMapDeleteBatchAsync: keys must be a multiple of " + std::to_string(shape.key_size) + " bytes");
  }
  const uint32_t key_size = shape.key_size;
  auto k = std::make_shared<std::vector<uint8_t>>(keys.Data(), keys.Data() + keys.Length());
  auto* worker = new BpfCallWorker(env, [fd, k, key_size]() {
    return DeleteBatch(fd, k->data(), static_cast<uint32_t>(k->size() / key_size), key_size);
  }, op);
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

Napi::Value BpfNumPossibleCpus(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int n = libbpf_num_possible_cpus();
  if (n < 0) return ThrowBpf(env, n, "libbpf_num_possible_cpus");
  return Napi::Number::New(env, n);
}

// ---- Programs ------------------------------------------------------------------------------

Napi::Value BpfProgTestRun(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  Napi::Buffer<uint8_t> data, ctx_in;
  Napi::Object opts;
  uint32_t repeat = 0, size_out = 0;
  bool has_repeat = false, has_ctx = false, has_size_out = false;
  if (!ArgFd(env, info[0], "bpfProgTestRun: progFd", &fd) ||
      !ArgBuffer(env, info[1], "bpfProgTestRun: data", &data) ||
      !ArgObject(env, info[2], "bpfProgTestRun: options", &opts) ||
      !OptU32(env, opts, "repeat", "bpfProgTestRun: options.repeat", &has_repeat, &repeat, INT32_MAX) ||
      !OptBuffer(env, opts, "ctxIn", "bpfProgTestRun: options.ctxIn", &has_ctx, &ctx_in) ||
      !OptU32(env, opts, "dataSizeOut", "bpfProgTestRun: options.dataSizeOut", &has_size_out, &size_out)) {
    return env.Undefined();
  }
  // Room for what the program may add (encapsulation, bpf_skb_change_head) unless told otherwise.
  std::vector<uint8_t> out(has_size_out ? size_out : data.Length() + 256);
  // The kernel copies out its whole context struct (struct __sk_buff: 192 bytes on 6.x) and
  // fails with ENOSPC if ctx_out is smaller, however little of it the caller passed in. Room to
  // spare for larger structs of later kernels; the caller gets back as many bytes as it gave.
  std::vector<uint8_t> ctx_out(has_ctx ? std::max<size_t>(ctx_in.Length(), 1024) : 0);

  bpf_test_run_opts o;
  std::memset(&o, 0, sizeof o);
  o.sz = sizeof o;
  o.data_in = data.Length() ? data.Data() : nullptr;
  o.data_size_in = static_cast<__u32>(data.Length());
  o.data_out = out.empty() ? nullptr : out.data();
  o.data_size_out = static_cast<__u32>(out.size());
  if (has_ctx) {
    o.ctx_in = ctx_in.Length() ? ctx_in.Data() : nullptr;
    o.ctx_size_in = static_cast<__u32>(ctx_in.Length());
    o.ctx_out = ctx_out.empty() ? nullptr : ctx_out.data();
    o.ctx_size_out = static_cast<__u32>(ctx_out.size());
  }
  o.repeat = has_repeat ? static_cast<int>(repeat) : 0;
  int r = bpf_prog_test_run_opts(fd, &o);
  if (r < 0) return ThrowBpf(env, r, "BPF_PROG_TEST_RUN " + std::to_string(fd));

  Napi::Object result = Napi::Object::New(env);
  result.Set("retval", Napi::Number::New(env, o.retval));
  result.Set("data", Napi::Buffer<uint8_t>::Copy(env, out.data(), std::min<size_t>(o.data_size_out, out.size())));
  result.Set("durationNs", Napi::Number::New(env, o.duration));
  if (has_ctx) {
    result.Set("ctx", Napi::Buffer<uint8_t>::Copy(env, ctx_out.data(), ctx_in.Length()));
  }
  return result;
}

}  // namespace membrane
