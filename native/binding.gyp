# Membrane's native addon: rtnetlink (libmnl) and bpf(2) (libbpf). Built by `npm run build:native`
# (node-gyp rebuild --directory native). Build dependencies: g++, make, python3, libmnl-dev, libbpf-dev
# (with libelf-dev and zlib1g-dev); tests also need clang to compile their BPF fixtures.
#
# C++ exceptions are disabled (NAPI_DISABLE_CPP_EXCEPTIONS, and node-gyp's default -fno-exceptions):
# every node-addon-api call that can fail is checked explicitly and errors are raised as pending
# JavaScript exceptions, so no C++ exception ever has to cross the N-API boundary.
{
  'targets': [
    {
      'target_name': 'membrane_native',
      'sources': [
        'src/addon.cc',
        'src/netlink.cc',
        'src/links.cc',
        'src/addrs.cc',
        'src/routes.cc',
        'src/bpf.cc',
        'src/tc.cc',
        'src/ringbuf.cc',
        'src/sock.cc',
      ],
      'include_dirs': [
        "<!(node -p \"require('node-addon-api').include_dir\")",
      ],
      'defines': [
        'NAPI_VERSION=8',
        'NAPI_DISABLE_CPP_EXCEPTIONS',
      ],
      'cflags': ['-fvisibility=hidden', '-Wall', '-Wextra'],
      'cflags_cc': ['-std=c++17', '-fvisibility=hidden', '-Wall', '-Wextra'],
      # Shared libbpf (libbpf.so.1): it pulls in libelf and zlib itself, so they need no -l here.
      'libraries': ['-lmnl', '-lbpf'],
    },
  ],
}
