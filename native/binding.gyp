# Membrane's rtnetlink addon. Built by `npm run build:native` (node-gyp rebuild --directory native).
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
      'libraries': ['-lmnl'],
    },
  ],
}
