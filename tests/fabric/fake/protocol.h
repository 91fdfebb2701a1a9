/* Wire format between the fake libnvfm.so.1 and the fake nv-fabricmanager (both test doubles).
 * A request is a header and `len` payload bytes; a reply is fmReturn_t, `len`, then the payload
 * (the SDK struct the caller asked for, byte for byte). */
#ifndef FAKE_FM_PROTOCOL_H
#define FAKE_FM_PROTOCOL_H
#include <stdint.h>

enum fake_op {
    OP_LIST = 1,
    OP_ACTIVATE = 2,
    OP_ACTIVATE_VFS = 3,
    OP_DEACTIVATE = 4,
    OP_SET_ACTIVATED = 5,
    OP_FAILED_DEVICES = 6,
    OP_UNSUPPORTED = 7,
};

struct fake_request { uint32_t op, arg, len; };
struct fake_reply { int32_t rc; uint32_t len; };

#endif
